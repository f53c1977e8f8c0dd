"""What the subcommand modules share: the `Runner` type, the parallel flags (--sp / --cfg-parallel) and the
training commands' flags.

The subcommand modules import this module, never the package: lumina_rt/cli/__init__.py is the only importer of
the subcommand modules, so there is no cycle between them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

Runner = Callable[[argparse.Namespace], int]

STARTED = time.perf_counter()  # when the command started (before torch is imported): success lines report from it


def add_parallel_flags(p: argparse.ArgumentParser) -> None:
    """--sp / --cfg-parallel: run over the processes `torchrun` starts (lumina_rt.distributed, docs/parallel.md)."""
    p.add_argument("--sp", type=int, default=None, help="sequence-parallel processes (Ulysses); launch under torchrun")
    p.add_argument(
        "--cfg-parallel",
        action="store_true",
        help="run the guidance branches on two halves of the processes (world size = 2 x sp); under torchrun",
    )


def parallel_config(args: argparse.Namespace):
    """The ParallelConfig the flags ask for, or None (single process)."""
    if args.sp is None and not args.cfg_parallel:
        return None
    from lumina_rt.distributed import ParallelConfig

    return ParallelConfig(sp=1 if args.sp is None else args.sp, cfg_parallel=args.cfg_parallel)


def add_run_flags(p: argparse.ArgumentParser, config_help: str) -> None:
    """The flags of a training command (`train`, `train-v2a`): config, run and export folders, resume, threads."""
    p.add_argument("config", help=config_help)
    p.add_argument("--out", default=None, help="run directory (checkpoints, log); default: the config's 'output'")
    p.add_argument("--export", default=None, help="write the final model here (default: the config's 'export')")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if the run has checkpoints")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many total steps (resumable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
