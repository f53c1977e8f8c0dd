"""`lumina-rt eval`: generate the held-out prompts with a model and score them (`lumina_rt.training.evaluate`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lumina_rt.cli.common import Runner


def add(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--model", default=None, help="checkpoint directory with components.json (default: built-in)")
    p.add_argument("--schedules", default="single_scale,multi_scale", help="comma-separated sampling presets")
    p.add_argument("--steps", type=int, default=None, help="sampling grid points (default: the checkpoint's preset)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the checkpoint's preset)")
    p.add_argument(
        "--split",
        default="combos",
        choices=["combos", "heldout"],
        help=(
            "prompts: combos = held-out colour/shape/direction combinations in training phrasing (v1's eval); "
            "heldout = the same with held-out templates, paraphrases and backgrounds (v2 caption set)"
        ),
    )
    p.add_argument("--seeds", default="0", help="comma-separated noise seeds")
    p.add_argument("--out", default=None, help="write the full report (with per-sample rows) as JSON here")
    p.add_argument("--save-videos", default=None, help="write the first 12 videos of each schedule as GIFs here")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--kernels",
        default="torch",
        choices=["torch", "cpu-fused"],
        help="kernel backend of the model (cpu-fused: the C++ fused ops and attention kernel)",
    )
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="model precision")
    p.add_argument(
        "--cache",
        default=None,
        help=(
            "step caching: off / safe / fast / safe+cfg or a threshold; runs each schedule uncached and cached and "
            "compares"
        ),
    )
    return run


def run(args: argparse.Namespace) -> int:
    import torch

    from lumina_rt.training.evaluate import evaluate_model, summary_lines

    torch.set_num_threads(args.threads)
    report = evaluate_model(
        args.model,
        tuple(s for s in args.schedules.split(",") if s),
        args.steps,
        args.cfg,
        tuple(int(s) for s in args.seeds.split(",")),
        args.save_videos,
        cache=args.cache,
        kernels=args.kernels,
        precision=args.precision,
        split=args.split,
    )
    for line in summary_lines(report):
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"report written to {args.out}")
    return 0
