"""`lumina-rt train CONFIG`: train (or resume) a model with the reference trainer (`lumina_rt.training.video`)."""

from __future__ import annotations

import argparse
import time

from lumina_rt.cli import Runner


def add(p: argparse.ArgumentParser) -> Runner:
    add_run_flags(p, "training config, e.g. configs/builtin.json")
    return run


def add_run_flags(p: argparse.ArgumentParser, config_help: str) -> None:
    """The flags of a training command (`train`, `train-v2a`): config, run and export folders, resume, threads."""
    p.add_argument("config", help=config_help)
    p.add_argument("--out", default=None, help="run directory (checkpoints, log); default: the config's 'output'")
    p.add_argument("--export", default=None, help="write the final model here (default: the config's 'export')")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if the run has checkpoints")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many total steps (resumable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")


def run(args: argparse.Namespace) -> int:
    from lumina_rt.training.video import train

    t0 = time.time()
    res = train(
        args.config, args.out, not args.no_resume, args.stop_after, args.export, not args.no_progress, args.threads
    )
    print(f"trained to step {res['step']} in {time.time() - t0:.0f} s; run dir {res['out']}", flush=True)
    if res["export"]:
        print(f"model written to {res['export']}")
    return 0
