"""`lumina-rt train-v2a CONFIG`: train (or resume) a Lumina-V2A model (`lumina_rt.v2a_train`)."""

from __future__ import annotations

import argparse

from lumina_rt.cli import Runner


def add(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("config", help="V2A training config, e.g. configs/v2a_builtin.json")
    p.add_argument("--out", default=None, help="run directory (checkpoints, log); default: the config's 'output'")
    p.add_argument("--export", default=None, help="write the final model here (default: the config's 'export')")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if the run has checkpoints")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many total steps (resumable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    return run


def run(args: argparse.Namespace) -> int:
    from lumina_rt.v2a_train import train_v2a

    res = train_v2a(
        args.config, args.out, not args.no_resume, args.stop_after, args.export, not args.no_progress, args.threads
    )
    print(f"trained to step {res['step']} in {res['seconds']:.0f} s; run dir {res['out']}", flush=True)
    if res["export"]:
        print(f"model written to {res['export']}")
    return 0
