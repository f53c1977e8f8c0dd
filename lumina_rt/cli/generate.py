"""`lumina-rt generate`: a video from the engines of an engine directory (or the built-in model's)."""

from __future__ import annotations

import argparse
import time

from lumina_rt.cli.common import Runner, add_parallel_flags, parallel_config


def add(p: argparse.ArgumentParser) -> Runner:
    from lumina_rt.builtin import BUILTIN_SCALE, BUILTIN_UPSCALE
    from lumina_rt.engines import BACKENDS
    from lumina_rt.video import UPSCALE_FILTERS

    p.add_argument("engine_dir", nargs="?", default=None, help="engine directory (manifest.json)")
    p.add_argument("--builtin", action="store_true", help="use the built-in model (engines built on first use)")
    p.add_argument("--prompt", action="append", default=None, help="prompt (repeat for a batch)")
    p.add_argument(
        "--unconditional", action="store_true", help="no prompt: a video conditioned on nothing (empty caption)"
    )
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
        "--scale",
        type=int,
        default=None,
        help=f"save the video this many times larger (default {BUILTIN_SCALE} with --builtin, else 1)",
    )
    p.add_argument(
        "--upscale",
        default=None,
        choices=UPSCALE_FILTERS,
        help=f"the filter that upscales it (default {BUILTIN_UPSCALE} with --builtin, else nearest)",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="step caching: off (default), safe, fast, safe+cfg (+ guidance reuse), or a threshold (docs/caching.md)",
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
    from lumina_rt.cli.common import STARTED
    from lumina_rt.errors import InputError
    from lumina_rt.request import GenerationRequest, load_caption_features
    from lumina_rt.runtime import Runtime

    if args.builtin == (args.engine_dir is not None):
        raise InputError("give an engine directory or --builtin (one of the two)")
    if args.precision is not None and not args.builtin:
        raise InputError(
            f"--precision {args.precision} applies to --builtin; an engine directory has its own precision "
            "(`lumina-rt build --precision`)"
        )
    request = GenerationRequest.from_cli(args)  # every rule that needs no engines, before any engine is built
    features = {}
    if args.caption_features:
        features = load_caption_features(args.caption_features, request.said("caption_features"))
    options = dict(backend=args.backend, parallel=parallel_config(args))
    if args.builtin:  # the sound model's engine is built on the first --audio
        runtime = Runtime.builtin(args.precision or "fp32", audio=request.audio, **options)
    else:
        runtime = Runtime(args.engine_dir, **options)
    result = runtime.pipeline.run(
        request,
        cap_feats=features.get("cap_feats"),
        cap_mask=features.get("cap_mask"),
        neg_cap_feats=features.get("neg_cap_feats"),
        neg_cap_mask=features.get("neg_cap_mask"),
        progress=not args.no_progress and runtime.is_main,
    )
    if not runtime.is_main:  # every process holds the result; rank 0 alone writes it
        return 0
    path = result.save(request.out, fps=request.fps, scale=request.scale, upscale=request.upscale)
    kind = "frames" if result.frames is not None else "latent preview (no decoder in the engine directory)"
    print(
        f"wrote {path} in {time.perf_counter() - STARTED:.1f} s ({kind}, {tuple(result.latents.shape)} latents, "
        f"{result.config.step}-point time grid, {result.evaluations} model evaluations, backend {result.backend}, "
        f"sampling {result.sampling_seconds:.1f} s)"
    )
    if result.flops is not None:
        branches = [sum(e[b] for e in result.flops["per_scale"].values()) for b in ("positive", "negative")]
        print(f"model FLOPs: {result.flops['total'] / 1e9:.4g} GFLOP (positive branch {branches[0] / 1e9:.4g}, "
              f"negative branch {branches[1] / 1e9:.4g})")  # fmt: skip
    if result.audio is not None:
        print(f"sound: {result.audio.shape[0]} track(s) of {result.audio.shape[1]} samples at {result.sample_rate} Hz")
    if result.cache is not None:
        scales = result.cache["per_scale"].items()
        per = ", ".join(f"{c} {s['evaluated']} run / {s['reused']} reused" for c, s in scales)
        reused = result.cache.get("guidance_reused")
        print(f"step cache {result.cache['policy']}: {per}" + ("" if reused is None else f", {reused} guided steps "
              "ran the positive branch alone"))  # fmt: skip
    return 0
