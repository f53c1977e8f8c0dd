"""`lumina-rt parity FIXTURE`: compare a kernel backend, or built engines, with a parity fixture."""

from __future__ import annotations

import argparse

from lumina_rt.cli.common import Runner, add_parallel_flags, parallel_config


def add(p: argparse.ArgumentParser) -> Runner:
    from lumina_rt.ops import KERNEL_BACKENDS
    from lumina_rt.tolerances import TOLERANCES

    p.add_argument("fixture", help="fixture .safetensors (format: shared/fixtures/README.md)")
    p.add_argument(
        "--backend",
        default="torch",
        choices=[b for b in KERNEL_BACKENDS if b != "auto"],
        help="kernel backend of the model",
    )
    p.add_argument("--engine-dir", default=None, help="check built engines in this directory instead of the model")
    p.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16"], help="precision of the model (not with --engine-dir)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="max relative error per case (default by precision: "
        + ", ".join(f"{k} {TOLERANCES[k]:g}" for k in ("fp32", "bf16"))
        + "; with --engine-dir, the engines' precision)",
    )
    p.add_argument("--json", action="store_true", help="print results as JSON")
    add_parallel_flags(p)
    return run


def run(args: argparse.Namespace) -> int:
    import torch

    from lumina_rt import ops
    from lumina_rt.errors import ConfigError
    from lumina_rt.model import MultiScaleNextDiT
    from lumina_rt.parity import ModelParityTarget, load_fixture, results_to_json, run_parity
    from lumina_rt.tolerances import DTYPES, TOLERANCES

    fixture = load_fixture(args.fixture)
    parallel = parallel_config(args)
    main_rank = True
    if args.engine_dir is not None:
        from lumina_rt.runtime import Runtime

        if args.precision != "fp32":
            raise ConfigError(
                f"--precision {args.precision} applies to the model; an engine directory has its own precision "
                "(`lumina-rt build --precision`)"
            )
        runtime = Runtime(args.engine_dir, parallel=parallel)
        runtime.engines.check_config(fixture.config)
        target = runtime.parity_target()
        precision = runtime.engines.precision
        label = f"engines:{runtime.engines.backend_name}"
        main_rank = runtime.is_main
    else:
        ops.set_backend(args.backend)
        model = MultiScaleNextDiT(fixture.config).eval()
        model.load_state_dict(fixture.state_dict, strict=True)
        precision = args.precision
        target = ModelParityTarget(model, DTYPES[precision])
        label = args.backend
    if args.tolerance is None:
        args.tolerance = TOLERANCES["fp32" if precision == "fp32" else "bf16"]
        if parallel is not None:
            from lumina_rt.distributed import init_mesh
            from lumina_rt.engines.parallel import parallel_velocity

            mesh = init_mesh(parallel, device="cpu", n_heads=fixture.config.n_heads)
            target = parallel_velocity(model, mesh)
            main_rank = mesh.get_rank() == 0
    if parallel is not None:
        label += f" (cfg {parallel.cfg} x sp {parallel.sp})"

    def show(r):
        if not args.json and main_rank:
            print(f"{'PASS' if r.passed else 'FAIL'}  {r.rel_err:.3e}  {r.kind:<22} {r.case}", flush=True)

    with torch.no_grad():
        results = run_parity(fixture, target, args.tolerance, on_result=show)
    ok = all(r.passed for r in results)
    if not main_rank:
        return 0 if ok else 1
    if args.json:
        print(results_to_json(fixture, label, results, args.tolerance, precision))
    else:
        worst = max(r.rel_err for r in results)
        print(
            f"{'passed' if ok else 'FAILED'}: {sum(r.passed for r in results)}/{len(results)} cases "
            f"within {args.tolerance:g} (max rel err {worst:.3e}, backend {label}, {precision})"
        )
    return 0 if ok else 1
