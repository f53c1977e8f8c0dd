"""`lumina-rt eval-v2a`: sound for held-out clips, scored for sync and pitch next to the shuffled-video control."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lumina_rt.cli.common import Runner


def add(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--model", default=None, help="V2A model directory (default: the built-in lumina_rt/builtin/v2a)")
    p.add_argument("--clips", type=int, default=48, help="held-out clips to generate and score")
    p.add_argument("--frames", type=int, default=8, help="video frames per clip")
    p.add_argument("--steps", type=int, default=None, help="sampling grid points (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    p.add_argument("--captions", action="store_true", help="also pass each clip's caption as the prompt")
    p.add_argument("--seed", type=int, default=0, help="data and noise seed")
    p.add_argument("--out", default=None, help="write the full report (with per-clip rows) as JSON here")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return run


def run(args: argparse.Namespace) -> int:
    import torch

    from lumina_rt.v2a.eval import evaluate_v2a
    from lumina_rt.v2a.pipeline import V2APipeline

    torch.set_num_threads(args.threads)
    pipeline = V2APipeline.builtin() if args.model is None else V2APipeline.from_dir(args.model)
    report = evaluate_v2a(
        pipeline, args.clips, args.frames, args.seed, args.steps, args.guidance, use_captions=args.captions
    )
    print(f"{'':24s} {'onset sync %':>12s} {'precision %':>12s} {'pitch %':>8s}")
    for name, s in report["summary"].items():
        print(f"{name:24s} {s['onset_sync_pct']:12.1f} {s['onset_precision_pct']:12.1f} {s['pitch_accuracy_pct']:8.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"report written to {args.out}")
    return 0
