"""Engine call versus the bare model, per scale: what the engine set adds around the model (patchify, RoPE tables,
profile choice, checks, copies).

    python bench/engine_overhead.py [--precision fp32|bf16] [--backend torch-cpu-fused] [--reps 5] [--json]

Builds torch engines of the bench model (bench/test_latency.py: small model size, random weights, latent
4 x 16 x 32 x 32, batch 2 = a CFG pair, 32 caption tokens) in a temporary folder, then times, per scale, one engine
call (`EngineSet.velocity`, fp32 latents in and out as the sampler gives them) and one call of the bare model at the
engine's precision with the same kernels (`model.velocity` on inputs already in that precision), in turns, median of
`--reps` after one warm-up each. The goal (issue 27): engine / model <= 1.1 at every scale.

For `--backend torch-compiled` the bare model is compiled too (`torch.compile` of `model.velocity` per scale, same
mode and ops as the engine: compiled_engine.compiled_kernels); each side's warm-up call is its compile, reported as
`engine_compile_s` / `model_compile_s`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from test_latency import CAP_LEN, LATENT, bench_inputs, bench_model

from lumina_rt import ops
from lumina_rt.checkpoint import save_native
from lumina_rt.engines import compiled_engine
from lumina_rt.engines.engine_set import EngineSet
from lumina_rt.engines.profiles import ServeShapes
from lumina_rt.export.build_engines import build

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BACKENDS = ("torch-cpu-fused", "torch", "torch-compiled")


def _bare(model, backend: str, combo: str):  # noqa: ANN001, ANN202
    """The bare model's velocity at one scale with the engine backend's kernels (compiled for torch-compiled)."""
    if backend == "torch-compiled":
        compiled = torch.compile(lambda *a: model.velocity(*a, combo), mode=compiled_engine.compile_mode("cpu"))

        def run(*args):  # noqa: ANN002, ANN202
            with compiled_engine.compiled_kernels("cpu"):
                return compiled(*args)

        return run

    def eager(*args):  # noqa: ANN002, ANN202
        with ops.use_backend({"torch-cpu-fused": "cpu-fused", "torch": "torch"}[backend]):
            return model.velocity(*args, combo)

    return eager


def measure(precision: str = "bf16", backend: str = "torch-cpu-fused", reps: int = 5) -> dict[str, dict[str, float]]:
    """Per scale: engine ms, bare model ms (medians) and their ratio (and the compile times of torch-compiled)."""
    model = bench_model()
    with tempfile.TemporaryDirectory(prefix="lumina_rt_overhead_") as root:
        save_native(Path(root) / "ckpt", model.config, model.state_dict())
        shapes = ServeShapes(resolutions=(LATENT[2:],), frames=(LATENT[1],), max_batch=1, max_caption=CAP_LEN)
        build(Path(root) / "ckpt", Path(root) / "engines", target="torch", precision=precision, shapes=shapes,
              measure=False)  # fmt: skip
        engines = EngineSet(Path(root) / "engines", backend=backend)
        bare = bench_model(DTYPES[precision])
        args32 = bench_inputs(2, torch.float32)
        args = bench_inputs(2, DTYPES[precision])
        out: dict[str, dict[str, float]] = {}
        with torch.no_grad():
            for combo in ("1x2", "2x2", "2x4"):
                times: dict[str, list[float]] = {"engine": [], "model": []}
                bare_velocity = _bare(bare, backend, combo)
                for _ in range(reps + 1):  # in turns; the first call of each side warms it up (compiles it)
                    start = time.perf_counter()
                    engines.velocity(*args32, combo)
                    times["engine"].append((time.perf_counter() - start) * 1e3)
                    start = time.perf_counter()
                    bare_velocity(*args)
                    times["model"].append((time.perf_counter() - start) * 1e3)
                engine_ms, model_ms = statistics.median(times["engine"][1:]), statistics.median(times["model"][1:])
                out[combo] = {"engine_ms": engine_ms, "model_ms": model_ms, "engine_over_model": engine_ms / model_ms}
                if backend == "torch-compiled":
                    out[combo]["engine_compile_s"] = times["engine"][0] / 1e3
                    out[combo]["model_compile_s"] = times["model"][0] / 1e3
        out["shape_cache"] = dict(engines.shape_cache)  # type: ignore[assignment]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", default="bf16", choices=list(DTYPES))
    p.add_argument("--backend", default="torch-cpu-fused", choices=BACKENDS)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args()
    result = measure(a.precision, a.backend, a.reps)
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{a.backend} {a.precision}, batch 2, latent {'x'.join(map(str, LATENT))}, median of {a.reps}:")
    for combo, r in result.items():
        if combo != "shape_cache":
            compiled = f" (compiled in {r['engine_compile_s']:.1f} s)" if "engine_compile_s" in r else ""
            print(f"  {combo}: engine {r['engine_ms']:.1f} ms{compiled}, model {r['model_ms']:.1f} ms, "
                  f"engine / model {r['engine_over_model']:.3f}")  # fmt: skip
    print(f"  shape cache: {result['shape_cache']}")


if __name__ == "__main__":
    main()
