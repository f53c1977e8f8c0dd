"""`lumina-rt` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from lumina_rt.errors import LuminaError

logger = logging.getLogger("lumina_rt")

Runner = Callable[[argparse.Namespace], int]
# name -> (help, add): `add(parser)` declares the subcommand's flags and returns its `run(args) -> exit code`.
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Runner]]] = {}


def register(name: str, help: str):
    """`@register(name, help)` on `add(parser) -> run`; other modules add subcommands the same way."""

    def deco(add: Callable[[argparse.ArgumentParser], Runner]) -> Callable[[argparse.ArgumentParser], Runner]:
        _COMMANDS[name] = (help, add)
        return add

    return deco


# ------------------------------------------------------------------------------------------------
# parity
# ------------------------------------------------------------------------------------------------


@register("parity", "compare a backend with a parity fixture made by the released code")
def _parity(p: argparse.ArgumentParser):
    from lumina_rt.ops import BACKENDS
    from lumina_rt.parity import TOLERANCE

    p.add_argument("fixture", help="fixture .safetensors (format: shared/fixtures/README.md)")
    p.add_argument(
        "--backend", default="torch", choices=[b for b in BACKENDS if b != "auto"], help="kernel backend of the model"
    )
    p.add_argument("--engine-dir", default=None, help="check built engines in this directory instead of the model")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="max relative error per case (default 1e-5)")
    p.add_argument("--json", action="store_true", help="print results as JSON")

    def run(args: argparse.Namespace) -> int:
        import torch

        from lumina_rt import ops
        from lumina_rt.model import MultiScaleNextDiT
        from lumina_rt.parity import ModelParityTarget, load_fixture, results_to_json, run_parity

        fixture = load_fixture(args.fixture)
        if args.engine_dir is not None:
            from lumina_rt.runtime import Runtime

            runtime = Runtime(args.engine_dir)
            runtime.check_config(fixture.config)
            evaluator = runtime.evaluator()
            label = f"engines:{runtime.backend_name}"
        else:
            ops.set_backend(args.backend)
            model = MultiScaleNextDiT(fixture.config).eval()
            model.load_state_dict(fixture.state_dict, strict=True)
            evaluator = ModelParityTarget(model)
            label = args.backend

        def show(r):
            if not args.json:
                print(f"{'PASS' if r.passed else 'FAIL'}  {r.rel_err:.3e}  {r.kind:<22} {r.case}", flush=True)

        with torch.no_grad():
            results = run_parity(fixture, evaluator, args.tolerance, on_result=show)
        ok = all(r.passed for r in results)
        if args.json:
            print(results_to_json(fixture, label, results, args.tolerance))
        else:
            worst = max(r.rel_err for r in results)
            print(
                f"{'passed' if ok else 'FAILED'}: {sum(r.passed for r in results)}/{len(results)} cases "
                f"within {args.tolerance:g} (max rel err {worst:.3e}, backend {label})"
            )
        return 0 if ok else 1

    return run


# ------------------------------------------------------------------------------------------------
# inspect
# ------------------------------------------------------------------------------------------------


@register("inspect", "print a model size's or checkpoint's config, parameter count and keys (no weights allocated)")
def _inspect(p: argparse.ArgumentParser):
    from lumina_rt.config import MODEL_SIZES

    p.add_argument("target", help=f"a model size ({', '.join(sorted(MODEL_SIZES))}) or a checkpoint directory")
    p.add_argument("--keys", action="store_true", help="list every state-dict key and shape")
    p.add_argument("--json", action="store_true", help="print JSON")

    def run(args: argparse.Namespace) -> int:
        from lumina_rt.describe import describe_target

        info = describe_target(args.target)
        if not args.keys:
            info.pop("state_dict")
        if args.json:
            print(json.dumps(info, indent=1))
            return 0
        print(f"model: {info['name']}")
        for k, v in info["config"].items():
            print(f"  {k:<20} {v}")
        for k, v in info["derived"].items():
            print(f"  {k:<20} {v}   (derived)")
        print(f"parameters: {info['parameters']:,}")
        if args.keys:
            for k, shape in info["state_dict"].items():
                print(f"{k}  {list(shape)}")
        return 0

    return run


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------


def _load_plugins() -> None:
    """Modules that add subcommands (imported for their `register` side effect; missing ones are skipped)."""
    import importlib

    for name in ("lumina_rt.runtime_cli", "lumina_rt.train", "lumina_rt.evaluate"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = argparse.ArgumentParser(prog="lumina-rt", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add) in _COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_run=add(sp))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args._run(args) or 0)
    except LuminaError as exc:
        print(f"lumina-rt {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run the imported module's main, so subcommands registered by other modules land in the same registry.
    from lumina_rt.cli import main as _main

    sys.exit(_main())
