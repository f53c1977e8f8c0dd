"""`lumina-rt generate`: a video from the engines of an engine directory (or the built-in model's)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lumina_rt.cli import Runner, add_parallel_flags, parallel_config


def _time_aware(text: str | None):
    """A number, a patch combo, or JSON for a time-aware value ('["2x4", [0.1, "2x2"]]')."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add(p: argparse.ArgumentParser) -> Runner:
    from lumina_rt.engines import BACKENDS

    p.add_argument("engine_dir", nargs="?", default=None, help="engine directory (manifest.json)")
    p.add_argument("--builtin", action="store_true", help="use the built-in model (engines built on first use)")
    p.add_argument("--prompt", action="append", default=None, help="prompt (repeat for a batch)")
    p.add_argument("--negative-prompt", default="", help='negative prompt for guidance (default "")')
    p.add_argument(
        "--caption-features",
        default=None,
        help="safetensors with cap_feats [B, L, D] (+ cap_mask, neg_cap_feats, neg_cap_mask) instead of a prompt",
    )
    p.add_argument("--out", default="video.mp4", help="output video, .mp4 or .gif (default video.mp4)")
    p.add_argument("--frames", type=int, default=None, help="frames (default: the largest served shape)")
    p.add_argument("--height", type=int, default=None, help="height in pixels")
    p.add_argument("--width", type=int, default=None, help="width in pixels")
    p.add_argument("--steps", type=int, default=None, help="sampling grid points (default: the preset's)")
    p.add_argument("--preset", default=None, help="named sample preset (default: the engine directory's)")
    p.add_argument("--schedule", default=None, help='patch schedule: "1x2" or JSON ["2x4", [0.1, "2x2"], [0.3, "1x2"]]')
    p.add_argument("--cfg", default=None, help="guidance scale (number or time-aware JSON)")
    p.add_argument("--motion", default=None, help="motion score (number or time-aware JSON; negative: none)")
    p.add_argument("--neg-motion", default=None, help="negative-branch motion score")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], help="engine backend")
    p.add_argument("--fps", type=int, default=8, help="frames per second of the video")
    p.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16"],
        help="with --builtin: engine precision (default fp32; bf16: torch engines, CPUs with native bf16 or GPUs)",
    )
    p.add_argument(
        "--scale", type=int, default=None, help="nearest-neighbour upscale factor (default 4 with --builtin, else 1)"
    )
    p.add_argument(
        "--cache", default=None, help="step caching: off (default), safe, fast, or a threshold (docs/caching.md)"
    )
    p.add_argument(
        "--audio",
        action="store_true",
        help="add a sound track made from the frames and prompt by the V2A model (MP4 only; docs/audio.md)",
    )
    p.add_argument("--audio-steps", type=int, default=None, help="V2A sampling grid points (default: the model's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_parallel_flags(p)
    return run


def run(args: argparse.Namespace) -> int:
    from lumina_rt.builtin import BUILTIN_DEFAULT_SIZE, builtin_v2a_source
    from lumina_rt.builtin.engines import builtin_engines
    from lumina_rt.errors import ConfigError, InputError
    from lumina_rt.runtime import Runtime

    if args.builtin == (args.engine_dir is not None):
        raise InputError("give an engine directory or --builtin (one of the two)")
    if args.precision is not None and not args.builtin:
        raise InputError(
            f"--precision {args.precision} applies to --builtin; an engine directory has its own precision "
            "(`lumina-rt build --precision`)"
        )
    if args.audio and Path(args.out).suffix.lower() != ".mp4":
        raise InputError(f"--audio needs an .mp4 --out (a GIF has no sound track), got {args.out!r}")
    if args.audio and args.builtin and builtin_v2a_source() is None:
        raise ConfigError("--audio needs the built-in V2A model, which is not installed (lumina_rt/builtin/v2a/)")
    engine_dir = builtin_engines(args.precision or "fp32") if args.builtin else Path(args.engine_dir)
    runtime = Runtime(engine_dir, backend=args.backend, parallel=parallel_config(args))
    audio = False
    if args.audio:
        audio = sound_stage(runtime, args)
    if args.builtin:
        f, h, w = BUILTIN_DEFAULT_SIZE
        args.frames, args.height, args.width = args.frames or f, args.height or h, args.width or w
    features = {}
    if args.caption_features:
        from safetensors.torch import load_file

        features = load_file(args.caption_features)
        if "cap_feats" not in features:
            raise InputError(f"{args.caption_features!r} has no 'cap_feats' tensor")
    result = runtime.generate(
        None if features else (args.prompt or [""]),
        negative_prompt=args.negative_prompt,
        cap_feats=features.get("cap_feats"),
        cap_mask=features.get("cap_mask"),
        neg_cap_feats=features.get("neg_cap_feats"),
        neg_cap_mask=features.get("neg_cap_mask"),
        frames=args.frames,
        height=args.height,
        width=args.width,
        steps=args.steps,
        preset=args.preset,
        schedule=_time_aware(args.schedule),
        cfg=_time_aware(args.cfg),
        motion=_time_aware(args.motion),
        neg_motion=_time_aware(args.neg_motion),
        seed=args.seed,
        cache=args.cache,
        progress=not args.no_progress and runtime.is_main,
        audio=audio,
        fps=args.fps,
    )
    if not runtime.is_main:  # every process holds the result; rank 0 alone writes it
        return 0
    scale = args.scale if args.scale is not None else (4 if args.builtin else 1)
    path = result.save(args.out, fps=args.fps, scale=scale)
    kind = "frames" if result.frames is not None else "latent preview (no decoder in the engine directory)"
    print(
        f"wrote {path} ({kind}, {tuple(result.latents.shape)} latents, {result.config.step}-point time grid, "
        f"{result.evaluations} model evaluations, backend {result.backend}, {result.seconds:.1f} s)"
    )
    if result.audio is not None:
        print(f"sound: {result.audio.shape[0]} track(s) of {result.audio.shape[1]} samples at {result.sample_rate} Hz")
    if result.cache is not None:
        scales = result.cache["per_scale"].items()
        per = ", ".join(f"{c} {s['evaluated']} run / {s['reused']} reused" for c, s in scales)
        print(f"step cache {result.cache['policy']}: {per}")
    return 0


def sound_stage(runtime, args: argparse.Namespace):
    """The audio stage of `--audio`: the engine directory's V2A engine (the built-in model's sound model's with
    --builtin); ConfigError when the directory has none."""
    stage = runtime.pipeline.audio_stage()
    if args.audio_steps is not None:
        stage.steps = args.audio_steps
    return stage
