"""`lumina-rt build` (and `python export/build_engines.py`, which runs it): the flags, the build, what it prints.

The build itself is `lumina_rt.export.build_engines.build` (its cached stages); errors are printed by the one path
in lumina_rt/cli/__init__.py.
"""

from __future__ import annotations

import argparse

from lumina_rt.cli.common import Runner
from lumina_rt.engines.measure import ranking_lines
from lumina_rt.engines.profiles import (
    DEFAULT_FRAMES,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_CAPTION,
    DEFAULT_RESOLUTIONS,
    ServeShapes,
    parse_frames,
    parse_resolutions,
)
from lumina_rt.errors import InputError
from lumina_rt.export.build_engines import TARGETS, build, measure_only
from lumina_rt.tolerances import DTYPES, PRECISIONS, TOLERANCE


def _served_shapes(args: argparse.Namespace) -> ServeShapes:
    return ServeShapes(
        resolutions=parse_resolutions(args.resolutions),
        frames=parse_frames(args.frames),
        max_batch=args.max_batch,
        max_caption=args.max_caption,
    )


def add(p: argparse.ArgumentParser) -> Runner:
    """The build command's flags (`lumina-rt build`, `python export/build_engines.py`); returns `run`."""
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (native or released layout); required")
    p.add_argument("--out", default=None, help="engine directory to create or bring up to date; required")
    p.add_argument(
        "--measure-only",
        default=None,
        metavar="ENGINE_DIR",
        help="only re-time the engine backends of an existing engine directory on this host and record the ranking "
        "in its manifest (e.g. engines measured on another machine); no --checkpoint / --out",
    )
    p.add_argument(
        "--target",
        default="auto",
        choices=TARGETS,
        help="files to build: torch (weights only), onnx (+ ONNX graphs), tensorrt (+ plans); auto: the most this "
        "machine can build and run",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="engine precision (bf16: torch / TensorRT, the GPU default to choose; fp16: TensorRT, torch on CUDA)",
    )
    default_res = ",".join(f"{h}x{w}" for h, w in DEFAULT_RESOLUTIONS)
    p.add_argument(
        "--resolutions", default=default_res, help=f"served HEIGHTxWIDTH in pixels, comma-separated ({default_res})"
    )
    p.add_argument(
        "--frames",
        default=",".join(map(str, DEFAULT_FRAMES)),
        help="served frame counts, comma-separated (1 = image)",
    )
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="prompts per call (engines take 2x: CFG)")
    p.add_argument("--max-caption", type=int, default=DEFAULT_MAX_CAPTION, help="longest caption in tokens")
    p.add_argument("--default-preset", default=None, help="sample preset Runtime.generate uses by default")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="max relative error of the ONNX check")
    p.add_argument("--workspace-gib", type=float, default=None, help="TensorRT builder workspace limit")
    p.add_argument("--force", action="store_true", help="rebuild every stage even if cached")
    p.add_argument(
        "--no-measure",
        action="store_true",
        help="do not time the engine backends (auto then follows a fixed order instead of the measured ranking)",
    )
    p.add_argument("--measure-steps", type=int, default=3, help="timed steps per backend and scale (default 3)")
    p.add_argument(
        "--measure-compiled",
        action="store_true",
        help="also measure the torch.compile backends (torch-compiled, torch-compiled-cuda): each scale compiles "
        "first (tens of seconds per scale on a small CPU, cached after); the ranking prints the compile time",
    )
    released = p.add_argument_group("the released pipeline's components (referenced by absolute path, not copied)")
    released.add_argument(
        "--text-encoder",
        default=None,
        metavar="GEMMA_DIR",
        help="local Gemma-2-2B folder (transformers layout): prompts are encoded as released (needs the 'text' extra)",
    )
    released.add_argument(
        "--vae",
        default=None,
        metavar="VAE_DIR",
        help="local CogVideoX VAE folder (diffusers layout, e.g. CogVideoX-2b/vae): videos are decoded as released "
        "(needs the 'vae' extra); also sets the released latent spec (16 channels, x4 time, x8 space)",
    )
    dtypes = ["auto", *DTYPES]
    released.add_argument(
        "--text-encoder-dtype", default="auto", choices=dtypes, help="auto: bf16 on CUDA, fp32 on the CPU"
    )
    released.add_argument("--vae-dtype", default="auto", choices=dtypes, help="auto: bf16 on CUDA, fp32 on the CPU")
    released.add_argument("--vae-tiling", action="store_true", help="decode in spatial tiles (less memory)")
    released.add_argument("--vae-slicing", action="store_true", help="decode one video of a batch at a time")
    p.add_argument(
        "--v2a",
        default=None,
        metavar="V2A_DIR",
        help="V2A checkpoint folder: also build its engine (sound for `generate --audio`; docs/audio.md)",
    )

    return run


def run(args: argparse.Namespace) -> int:
    """Build, then print what each stage did, the measured ranking and one summary line."""
    if args.measure_only is not None:
        if args.checkpoint is not None or args.out is not None:
            raise InputError("--measure-only ENGINE_DIR re-measures existing engines: give no --checkpoint / --out")
        report = measure_only(args.measure_only, steps=args.measure_steps, compiled=args.measure_compiled)
        for line in [*report.done, *ranking_lines(report.ranking)]:
            print(line)
        print(f"ranking of {report.engine_dir} re-measured on this host in {report.seconds:.1f} s")
        return 0
    if args.checkpoint is None or args.out is None:
        missing = " and ".join(f for f, v in (("--checkpoint", args.checkpoint), ("--out", args.out)) if v is None)
        raise InputError(f"lumina-rt build needs {missing} (or --measure-only ENGINE_DIR)")
    report = build(
        args.checkpoint,
        args.out,
        target=args.target,
        precision=args.precision,
        shapes=_served_shapes(args),
        default_preset=args.default_preset,
        tolerance=args.tolerance,
        workspace_bytes=int(args.workspace_gib * 2**30) if args.workspace_gib else None,
        force=args.force,
        measure=not args.no_measure,
        measure_steps=args.measure_steps,
        measure_compiled=args.measure_compiled,
        text_encoder=args.text_encoder,
        vae=args.vae,
        text_encoder_dtype=args.text_encoder_dtype,
        vae_dtype=args.vae_dtype,
        vae_tiling=args.vae_tiling,
        vae_slicing=args.vae_slicing,
        v2a=args.v2a,
    )
    for line in report.cached:
        print(f"cached  {line}")
    for line in report.done:
        print(f"built   {line}")
    for line in ranking_lines(report.ranking):
        print(line)
    if report.changed:
        print(f"engines (target {report.target}) written to {report.engine_dir} in {report.seconds:.1f} s")
    else:
        print(f"nothing to do: the engines in {report.engine_dir} are up to date (target {report.target})")
    return 0
