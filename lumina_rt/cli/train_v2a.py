"""`lumina-rt train-v2a CONFIG`: train (or resume) a Lumina-V2A model (`lumina_rt.v2a.train`)."""

from __future__ import annotations

import argparse

from lumina_rt.cli.common import Runner, add_run_flags


def add(p: argparse.ArgumentParser) -> Runner:
    add_run_flags(p, "V2A training config, e.g. configs/v2a_builtin.json")
    return run


def run(args: argparse.Namespace) -> int:
    from lumina_rt.v2a.train import train_v2a

    res = train_v2a(
        args.config, args.out, not args.no_resume, args.stop_after, args.export, not args.no_progress, args.threads
    )
    print(f"trained to step {res['step']} in {res['seconds']:.0f} s; run dir {res['out']}", flush=True)
    if res["export"]:
        print(f"model written to {res['export']}")
    return 0
