"""`lumina-rt train CONFIG`: train (or resume) a model with the reference trainer (`lumina_rt.training.video`)."""

from __future__ import annotations

import argparse
import time

from lumina_rt.cli.common import Runner, add_run_flags


def add(p: argparse.ArgumentParser) -> Runner:
    add_run_flags(p, "training config, e.g. configs/builtin.json")
    return run


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
