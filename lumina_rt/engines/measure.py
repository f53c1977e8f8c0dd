"""Which engine backend is fastest here: timed, per scale, on the engine directory's own served shape.

`lumina-rt build` calls `measure_backends` after writing the engines and records the result in the manifest
("ranking"); `EngineSet(backend="auto")` then takes, per scale, the first backend of that ranking that can run.
Each backend that can run here is timed on the largest served shape of each scale (a CFG pair: batch 2 where the
profile allows it, a 32-token caption; without a GPU the largest served shape of at most `CPU_TOKENS` tokens, else
the smallest: `measure_shape`): one warm-up call, then `steps` calls, the backends taking turns so that a
busy moment of the machine hits all of them alike; the median counts. A backend is ranked above `torch` (the
reference engine) only when it is at least `MARGIN` faster: a tie goes to the reference.

Compiled backends (`Backend.compiled`: torch-compiled, torch-compiled-cuda) are measured only when asked
(`compiled=True`, `lumina-rt build --measure-compiled`): their warm-up call compiles the scale (tens of seconds on
a small CPU), recorded as the row's `compile_s`. A backend whose call fails with BackendUnavailableError (a compile
that cannot run here) is dropped from the ranking and listed under "not_measured" with the reason.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Any

import torch

from lumina_rt.engines import BACKENDS, UNMEASURED_ORDER
from lumina_rt.engines.manifest import host
from lumina_rt.errors import BackendUnavailableError

logger = logging.getLogger(__name__)

MARGIN = 0.03
CAPTION = 32
# Without a GPU a scale is timed on at most this many tokens per item: the released default profile (96 frames of
# 960x960) is hours of CPU time per call, and graphs that hold the attention matrix would need more memory than the
# machine has (a build of the built-in model with the default profile was OOM-killed at 24 GB before this cap).
CPU_TOKENS = 4096
NOT_ASKED = "a compiled backend, measured only when asked: lumina-rt build --measure-compiled"


def measure_shape(served: list[dict[str, Any]], gpu: bool) -> dict[str, Any]:
    """The served shape a scale is timed on: the largest; without a GPU the largest within CPU_TOKENS, else the
    smallest."""
    if not gpu:
        within = [s for s in served if s["tokens"] <= CPU_TOKENS]
        return max(within, key=lambda s: s["tokens"]) if within else min(served, key=lambda s: s["tokens"])
    return max(served, key=lambda s: s["tokens"])


def _inputs(engines: Any, combo: str, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    prof = engines.profiles[combo]
    best = measure_shape(list(prof.served), gpu=torch.cuda.is_available())
    batch = 2 if 2 in prof.batch else prof.batch.max
    caption = min(CAPTION, prof.caption.max)
    grid = tuple(int(g) for g in best["latent"])
    cfg = engines.config
    x = torch.randn(batch, cfg.in_channels, *grid, generator=gen)
    t = torch.rand(batch, generator=gen)
    cap = torch.randn(batch, caption, cfg.cap_feat_dim, generator=gen)
    mask = torch.ones(batch, caption, dtype=torch.int64)
    motion = torch.full((batch,), 1.0)
    return x, t, cap, mask, motion


def rank(times: dict[str, float]) -> list[dict[str, Any]]:
    """Backends fastest first; `torch` keeps first place unless another is MARGIN faster."""
    rows = sorted(({"backend": b, "ms": ms} for b, ms in times.items()), key=lambda r: r["ms"])
    if "torch" in times and rows[0]["backend"] != "torch" and rows[0]["ms"] > (1 - MARGIN) * times["torch"]:
        rows.sort(key=lambda r: (r["backend"] != "torch", r["ms"]))
    return rows


def measure_backends(
    engine_dir: str | os.PathLike,
    manifest: dict[str, Any],
    steps: int = 3,
    backends: list[str] | None = None,
    compiled: bool = False,
) -> dict[str, Any]:
    """Time every engine backend that can run here on each scale (the compiled ones with `compiled`, or when named
    in `backends`); returns the manifest's "ranking" entry."""
    from lumina_rt.engines.engine_set import EngineSet

    sets: dict[str, EngineSet] = {}
    skipped: dict[str, str] = {}
    for name in backends or UNMEASURED_ORDER:
        try:
            es = EngineSet(engine_dir, backend=name, scales=[], verify=False, manifest=manifest)
        except BackendUnavailableError as exc:
            skipped[name] = str(exc)
            continue
        if backends is None and BACKENDS[name].compiled and not compiled:
            skipped[name] = NOT_ASKED
            continue
        sets[name] = es
    if not sets:
        raise BackendUnavailableError(f"no engine backend can run these engines here, nothing to measure: {skipped}")
    gen = torch.Generator().manual_seed(0)
    scales: dict[str, list[dict[str, Any]]] = {}
    shapes: dict[str, dict[str, int]] = {}
    with torch.no_grad():
        for combo in manifest["scales"]:
            any_set = next(iter(sets.values()))
            args = _inputs(any_set, combo, gen)
            samples: dict[str, list[float]] = {name: [] for name in sets}
            warmup: dict[str, float] = {}
            for rep in range(steps + 1):
                for name, es in list(sets.items()):
                    start = time.perf_counter()
                    try:
                        es.velocity(*args, combo)
                    except BackendUnavailableError as exc:  # e.g. a compile that cannot run here
                        skipped[name] = str(exc)
                        del sets[name], samples[name]
                        continue
                    if rep:  # the first call of each backend warms it up (compiles the compiled backends)
                        samples[name].append((time.perf_counter() - start) * 1e3)
                    else:
                        warmup[name] = time.perf_counter() - start
            if not sets:
                raise BackendUnavailableError(f"no engine backend could run scale {combo} here: {skipped}")
            times = {name: statistics.median(v) for name, v in samples.items()}
            scales[combo] = [{**r, "ms": round(r["ms"], 3), **_compile_s(r["backend"], warmup)} for r in rank(times)]
            x, _, cap = args[:3]
            shapes[combo] = {"batch": int(x.shape[0]), "caption": int(cap.shape[1]), "latent": list(x.shape[2:])}
            logger.info("measured scale %s: %s", combo, ", ".join(map(_row, scales[combo])))
    return {"host": host(), "steps": steps, "shapes": shapes, "scales": scales, "not_measured": skipped}


def _compile_s(name: str, warmup: dict[str, float]) -> dict[str, float]:
    """{"compile_s": seconds of the warm-up call} for a compiled backend, {} for the others."""
    return {"compile_s": round(warmup[name], 2)} if BACKENDS[name].compiled and name in warmup else {}


def _row(r: dict[str, Any]) -> str:
    """A ranking row as text: torch 41.0 ms, or torch-compiled 38.2 ms (compiled in 40.1 s)."""
    compiled = f" (compiled in {r['compile_s']:.1f} s)" if "compile_s" in r else ""
    return f"{r['backend']} {r['ms']:.1f} ms{compiled}"


def ranking_lines(ranking: dict[str, Any] | None) -> list[str]:
    """The measured ranking as lines for a terminal (what `lumina-rt build` prints)."""
    if not ranking:
        return ["backend ranking: not measured (auto uses the fixed order " + " > ".join(UNMEASURED_ORDER) + ")"]
    h = ranking.get("host", {})
    lines = [f"backend ranking (one step per scale, median of {ranking.get('steps')}; {h.get('cpu')}, "
             f"{h.get('threads')} threads{', ' + h['gpu'] if h.get('gpu') else ''}):"]  # fmt: skip
    for combo, rows in ranking.get("scales", {}).items():
        ms = "  ".join(f"{i + 1}. {_row(r)}" for i, r in enumerate(rows))
        lines.append(f"  {combo}: {ms}")
    for name, why in (ranking.get("not_measured") or {}).items():
        lines.append(f"  not measured: {name} ({why})")
    return lines
