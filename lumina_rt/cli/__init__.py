"""`lumina-rt` command line: one entry point, one module per subcommand.

`COMMANDS` is the whole table. Each module named there exposes `add(parser) -> run`: `add` declares the
subcommand's flags and returns `run(args) -> exit code`; what they share is in `lumina_rt.cli.common` (this
package is the only importer of the subcommand modules). The library never imports this package (nor argparse);
`python -m lumina_rt` and the `lumina-rt` console script both run `main`.

Exit codes: 0 done; 2 a typed error (one line on stderr: `lumina-rt COMMAND: error: Type: message`) or a bad
flag; 130 interrupted (Ctrl-C: one line `interrupted`; outputs are written atomically, so none is left half
written); a closed stdout pipe (`lumina-rt inspect small --keys | head -5`) ends quietly with 141.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from lumina_rt.errors import LuminaError
from lumina_rt.version import __version__

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
    "serve": (
        "serve Lumina-Video over HTTP: the OpenAI Videos API, a durable job queue, a web page (docs/serving.md)",
        "lumina_rt.cli.serve",
    ),
    "generate-reference": (
        "generate a video with a checkpoint's reference torch model (no engines needed)",
        "lumina_rt.cli.generate_reference",
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the flag, the bad value, where to look) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lumina-rt", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"lumina-rt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, module) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_run=importlib.import_module(module).add(sp))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; see the module docstring for the exit codes."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): nothing more to say; stdout to /dev/null so the final flush is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside main, not at interpreter exit
        return code
    except LuminaError as exc:
        print(f"lumina-rt {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        if "torch.distributed" in sys.modules:
            from lumina_rt.distributed import shutdown

            shutdown()
