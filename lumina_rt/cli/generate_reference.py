"""`lumina-rt generate-reference`: a video from a checkpoint's reference torch model and sampler (no engines)."""

from __future__ import annotations

import argparse
import time

from lumina_rt.cli.common import Runner


def add(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--builtin", action="store_true", help="use the built-in model (the default here)")
    p.add_argument("--model", default=None, help="checkpoint directory with components.json (default: built-in)")
    p.add_argument("--prompt", required=True, help='e.g. "a red circle moving right quickly"')
    p.add_argument("--out", default="demo.gif", help="output .gif or .mp4")
    p.add_argument("--schedule", default="multi_scale", help="single_scale or multi_scale")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--motion", type=float, default=None, help="motion score (px/frame at 32 px); -1: none")
    p.add_argument("--seed", type=int, default=0)
    return run


def run(args: argparse.Namespace) -> int:
    import torch

    from lumina_rt.builtin import BUILTIN_UPSCALE
    from lumina_rt.builtin.reference import generate_reference
    from lumina_rt.video import write_video

    torch.set_num_threads(2)
    t0 = time.time()
    video = generate_reference(
        args.prompt,
        steps=args.steps,
        sample=args.schedule,
        cfg=args.cfg,
        motion=args.motion,
        seed=args.seed,
        directory=args.model,
    )
    path = write_video(video[0], args.out, scale=max(1, 128 // video.shape[3]), upscale=BUILTIN_UPSCALE)  # ~128 px
    print(f"wrote {path} ({video.shape[2]} frames, {video.shape[3]}x{video.shape[4]}) in {time.time() - t0:.1f} s")
    return 0
