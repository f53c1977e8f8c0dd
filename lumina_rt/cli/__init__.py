"""`lumina-rt` command line: one entry point, one module per subcommand.

`COMMANDS` is the whole table. Each module named there exposes `add(parser) -> run`: `add` declares the
subcommand's flags and returns `run(args) -> exit code`. The library never imports this package (nor argparse);
`python -m lumina_rt` and the `lumina-rt` console script both run `main`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from lumina_rt.errors import LuminaError

Runner = Callable[[argparse.Namespace], int]

# name -> (help, module with `add(parser) -> run`), in the order `lumina-rt --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "parity": ("compare a backend with a parity fixture made by the released code", "lumina_rt.cli.parity"),
    "inspect": (
        "print a model size's or checkpoint's config, parameter count and keys (no weights allocated)",
        "lumina_rt.cli.inspect",
    ),
    "build": (
        "export, check and build the per-patch-size engines of a checkpoint into an engine directory",
        "lumina_rt.cli.build",
    ),
    "generate": (
        "generate a video with the engines of an engine directory (`lumina-rt build` makes one)",
        "lumina_rt.cli.generate",
    ),
    "train": (
        "train a Multi-scale Next-DiT on the synthetic multi-source data (config: JSON or TOML)",
        "lumina_rt.cli.train",
    ),
    "make-data": (
        "write sample clips of the synthetic multi-source data (GIFs + captions.json)",
        "lumina_rt.cli.make_data",
    ),
    "eval": (
        "generate held-out prompts with a model and score colour / direction / speed adherence",
        "lumina_rt.cli.eval",
    ),
    "v2a": (
        "add sound made by the V2A model to a video (MP4 out; the video stream is kept)",
        "lumina_rt.cli.v2a",
    ),
    "train-v2a": (
        "train a Lumina-V2A (video-to-audio) model on the synthetic bouncing clips with sounds",
        "lumina_rt.cli.train_v2a",
    ),
    "eval-v2a": (
        "generate sound for held-out clips with a V2A model and score onset sync and pitch vs a shuffled control",
        "lumina_rt.cli.eval_v2a",
    ),
    "generate-reference": (
        "generate a video with a checkpoint's reference torch model (no engines needed)",
        "lumina_rt.cli.generate_reference",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lumina-rt", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, module) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_run=importlib.import_module(module).add(sp))
    return parser


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args._run(args) or 0)
    except LuminaError as exc:
        print(f"lumina-rt {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        if "torch.distributed" in sys.modules:
            from lumina_rt.distributed import shutdown

            shutdown()
