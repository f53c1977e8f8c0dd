"""Step latency per patch size and backend, and end-to-end single- vs multi-scale sampling, at CPU sizes.

Every comparison is a ratio of times measured in this run. Sizes: the `small` preset (dim 384, 6 layers, GQA 6/3
heads, QK-norm, three patch sizes) on a latent of 4 × 16 × 32 × 32 (16 latent frames, as released) with 32
caption tokens.
"""

from __future__ import annotations

import functools
import math
import statistics
import tempfile
import time
from pathlib import Path

import pytest
import report_rows
import torch

from lumina_rt import ops
from lumina_rt.caching import StepCache
from lumina_rt.config import ModelConfig
from lumina_rt.flops import FlopCount, forward_flops, token_count, weight_bytes
from lumina_rt.model import MultiScaleNextDiT
from lumina_rt.sampling import Conditioning, SampleConfig, sample_euler

MODEL_SIZE = "small"
LATENT = (4, 16, 32, 32)  # C, F, H, W: 16 latent frames as released; 4096 tokens at 1x2
CAP_LEN = 32
E2E_STEPS = 12
SIZES = f"{MODEL_SIZE} model size, latent {'x'.join(map(str, LATENT))}, {CAP_LEN} caption tokens"


@functools.cache
def bench_model(dtype: torch.dtype = torch.float32) -> MultiScaleNextDiT:
    torch.manual_seed(0)
    model = MultiScaleNextDiT(ModelConfig.from_name(MODEL_SIZE)).eval()
    with torch.no_grad():  # non-zero gates / modulation so every branch does real work
        for name, p in model.named_parameters():
            if any(s in name for s in ("adaLN", "gate", "final_layer")):
                p.normal_(0, 0.02)
    model.check_inputs = False
    return model.to(dtype)


def bench_inputs(batch: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    cfg = bench_model().config
    x = torch.randn(batch, *LATENT, generator=g).to(dtype)
    cap = torch.randn(batch, CAP_LEN, cfg.cap_feat_dim, generator=g).to(dtype)
    mask = torch.ones(batch, CAP_LEN, dtype=torch.long)
    return x, torch.rand(batch, generator=g), cap, mask, torch.full((batch,), 6.0)


@functools.cache
def _engine_dir() -> Path:
    """Engines of the same model (ONNX, or torch on a base install without the `onnx` extra), built once per bench
    session (with the backend ranking measured)."""
    from lumina_rt.checkpoint import save_native
    from lumina_rt.engines.profiles import ServeShapes
    from lumina_rt.export.build_engines import build

    model = bench_model()
    root = Path(tempfile.mkdtemp(prefix="lumina_rt_bench_"))
    save_native(root / "ckpt", model.config, model.state_dict())
    shapes = ServeShapes(resolutions=(LATENT[2:],), frames=(LATENT[1],), max_batch=2, max_caption=CAP_LEN)
    build(root / "ckpt", root / "engines", target="torch" if report_rows.onnx_missing() else "onnx", shapes=shapes)
    return root / "engines"


@functools.cache
def _ort_runtime():
    from lumina_rt.runtime import Runtime

    report_rows.needs_onnx("ONNX Runtime engines")
    return Runtime(_engine_dir(), backend="onnxruntime")


STEP_TIMES: dict[tuple[str, str, str], float] = {}


@pytest.mark.parametrize("dtype_name", ["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["torch", "cpu-fused", "onnxruntime"])
@pytest.mark.parametrize("combo", ["1x2", "2x2", "2x4"])
def test_step(benchmark, combo, backend, dtype_name):
    if backend == "onnxruntime" and dtype_name == "bf16":
        pytest.skip("ONNX Runtime engines are fp32 on CPU (bf16 engines need TensorRT)")
    if backend == "onnxruntime":
        report_rows.needs_onnx(f"step {combo} onnxruntime {dtype_name}")
    if backend != "onnxruntime" and backend not in ops.available_backends():
        pytest.fail(f"kernel backend {backend!r} is not available: the C++ extension lumina_rt._C is not built")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    model = bench_model(dtype)
    x, t, cap, mask, motion = bench_inputs(2, dtype)
    cfg = model.config

    def step():
        with torch.no_grad():
            if backend == "onnxruntime":
                return _ort_runtime().engines.velocity(x, t, cap, mask, motion, combo)
            with ops.use_backend(backend):
                return model.velocity(x, t, cap, mask, motion, combo)

    out = benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == x.shape and bool(torch.isfinite(out.float()).all())
    ms = benchmark.stats.stats.median * 1e3
    STEP_TIMES[(combo, backend, dtype_name)] = ms
    n = token_count(cfg, combo, *LATENT[1:])
    gflops = forward_flops(cfg, combo, n, CAP_LEN, batch=2) / (ms * 1e-3) / 1e9
    ceiling = report_rows.CEILINGS.get(f"matmul_{dtype_name}_gflops", float("nan"))
    label = {"torch": "torch eager", "cpu-fused": "torch+cpu-fused", "onnxruntime": "ONNX Runtime"}[backend]
    row = dict(combo=combo, backend=label, dtype=dtype_name,
               batch=2, tokens=n, ms=ms, gflops=gflops, pct_of_matmul=100 * gflops / ceiling,
               weights_mb=weight_bytes(cfg, 2 if dtype == torch.bfloat16 else 4) / 2**20)  # fmt: skip
    benchmark.extra_info.update(row)
    report_rows.add("One denoising step (batch 2 = CFG pair)", row)


def test_ort_over_torch_summary():
    """Step time ratio, ONNX Runtime over torch eager (fp32), per patch size; the headline is the finest patch."""
    report_rows.needs_onnx("ort_over_torch")
    ratios = {}
    for combo in ("1x2", "2x2", "2x4"):
        ort, eager = STEP_TIMES.get((combo, "onnxruntime", "fp32")), STEP_TIMES.get((combo, "torch", "fp32"))
        if ort is None or eager is None:
            pytest.fail(f"step benchmarks for {combo} fp32 torch/onnxruntime did not run in this session")
        ratios[combo] = ort / eager
    report_rows.SUMMARY["ort_over_torch"] = dict(
        value=ratios["1x2"], per_scale=ratios, sizes=f"{SIZES}; fp32, batch 2, finest patch (1x2)"
    )


def test_ort_attention_forms():
    """ONNX Runtime step time with the two exported attention forms (fused MultiHeadAttention over MatMul / Softmax),
    per scale, timed in turns on the same inputs; the engine build exports the form this measures faster."""
    report_rows.needs_onnx("ort_mha_over_decomposed")
    import numpy as np
    import onnx
    import onnxruntime as ort

    from lumina_rt.export import onnx_export as ox
    from lumina_rt.export.build_engines import attention_form
    from lumina_rt.model import latent_rope_tables

    model = bench_model()
    x, t, cap, mask, motion = bench_inputs(2, torch.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="lumina_rt_forms_") as work:
        for combo in ("1x2", "2x2", "2x4"):
            pf, p = model.config.check_combo(combo)
            cos, sin = latent_rope_tables(model.config, *LATENT[1:], pf, p)
            feeds = dict(tokens=ops.patchify(x, pf, p, p).numpy(), cos=cos.numpy(), sin=sin.numpy(), t=t.numpy(),
                         cap_feats=cap.numpy(), cap_mask=mask.numpy(), motion=motion.numpy())  # fmt: skip
            sessions = {}
            for form in ox.ATTENTION_FORMS:
                proto, folder = ox.export_scale(model, combo, Path(work) / f"{combo}-{form}", attention=form)
                onnx.save(proto, str(folder / "graph.onnx"))
                sessions[form] = ort.InferenceSession(str(folder / "graph.onnx"), options, ["CPUExecutionProvider"])
            outs = [s.run(None, feeds)[0] for s in sessions.values()]
            assert np.abs(outs[0] - outs[1]).max() <= 1e-4 * np.abs(outs[0]).max()
            times: dict[str, list[float]] = {form: [] for form in sessions}
            for _ in range(5):
                for form, session in sessions.items():
                    start = time.perf_counter()
                    session.run(None, feeds)
                    times[form].append((time.perf_counter() - start) * 1e3)
            ms = {form: statistics.median(v) for form, v in times.items()}
            ratios[combo] = ms["ort-mha"] / ms["decomposed"]
            row = dict(combo=combo, decomposed_ms=ms["decomposed"], ort_mha_ms=ms["ort-mha"],
                       mha_over_decomposed=ratios[combo], exported_for_onnxruntime=attention_form("onnx"))  # fmt: skip
            report_rows.add("ONNX Runtime attention forms (fp32, batch 2)", row)
    report_rows.SUMMARY["ort_mha_over_decomposed"] = dict(
        value=ratios["1x2"], per_scale=ratios, sizes=f"{SIZES}; ONNX Runtime fp32, batch 2, finest patch (1x2)"
    )


def test_auto_over_torch():
    """Step time of the engine backend `auto` picks (the build's measured ranking) over torch eager, per scale.

    Torch eager here is the `torch` engine of the same engine directory. Where auto picked it, the two are the same
    engine and the ratio is 1 by construction (not timed twice); otherwise both are timed in turns, median of 5.
    """
    from lumina_rt.engines.engine_set import EngineSet

    auto, eager = EngineSet(_engine_dir()), EngineSet(_engine_dir(), backend="torch")
    x, t, cap, mask, motion = bench_inputs(2, torch.float32)
    ratios, chosen = {}, {}
    for combo in ("1x2", "2x2", "2x4"):
        chosen[combo] = auto.backends[combo]
        if chosen[combo] == "torch":
            ratios[combo] = 1.0
            row = dict(combo=combo, auto="torch (the same engine: not timed twice)", auto_over_torch=1.0)
            report_rows.add("Auto-selected engine backend vs torch eager (fp32, batch 2)", row)
            continue
        times: dict[str, list[float]] = {"auto": [], "torch": []}
        with torch.no_grad():
            for rep in range(6):
                for name, es in (("auto", auto), ("torch", eager)):
                    start = time.perf_counter()
                    es.velocity(x, t, cap, mask, motion, combo)
                    if rep:
                        times[name].append(time.perf_counter() - start)
        ratios[combo] = statistics.median(times["auto"]) / statistics.median(times["torch"])
        report_rows.add("Auto-selected engine backend vs torch eager (fp32, batch 2)",
                        dict(combo=combo, auto=chosen[combo], auto_over_torch=ratios[combo]))  # fmt: skip
    report_rows.SUMMARY["auto_over_torch"] = dict(
        value=max(ratios.values()), per_scale=ratios, chosen=chosen,
        sizes=f"{SIZES}; fp32, batch 2; worst scale as the value",
    )  # fmt: skip


def test_bf16_over_fp32_summary():
    """bf16 over fp32 step time at the finest patch, on the CPU serving path (torch + C++ ops) and torch eager.

    The serving path is what `torch-cpu-fused` engines run (the C++ attention kernel included); the value is its ratio.
    Also the step's share of the matmul ceiling per dtype (targets: bf16 >= 60 %, fp32 >= 85 %).
    """
    ratios, pct = {}, {}
    for backend in ("cpu-fused", "torch"):
        fp32, bf16 = STEP_TIMES.get(("1x2", backend, "fp32")), STEP_TIMES.get(("1x2", backend, "bf16"))
        if fp32 is None or bf16 is None:
            pytest.fail(f"step benchmarks for 1x2 {backend} fp32/bf16 did not run in this session (run all of bench/)")
        ratios[backend] = bf16 / fp32
    cfg = bench_model().config
    flops = forward_flops(cfg, "1x2", token_count(cfg, "1x2", *LATENT[1:]), CAP_LEN, batch=2)
    for dtype_name in ("fp32", "bf16"):
        ms = STEP_TIMES[("1x2", "cpu-fused", dtype_name)]
        ceiling = report_rows.CEILINGS.get(f"matmul_{dtype_name}_gflops", float("nan"))
        pct[dtype_name] = 100 * flops / (ms * 1e-3) / 1e9 / ceiling
    report_rows.SUMMARY["bf16_over_fp32"] = dict(
        value=ratios["cpu-fused"], torch_eager=ratios["torch"], sizes=f"{SIZES}; torch + C++ ops, 1x2, batch 2"
    )
    for dtype_name in ("bf16", "fp32"):
        report_rows.SUMMARY[f"{dtype_name}_step_pct_of_matmul"] = dict(
            value=pct[dtype_name], sizes=f"{SIZES}; torch + C++ ops, 1x2, batch 2; % of this run's {dtype_name} matmul"
        )


@pytest.mark.parametrize("dtype_name", ["fp32", "bf16"])
def test_attention_op(dtype_name):
    """One block's attention (self over 4096 tokens + gated cross to 32 caption tokens, GQA 6/3, head dim 64, batch
    2): PyTorch eager (SDPA twice, K/V repeated) vs the C++ kernel, timed in turns; GFLOP/s of QK^T and PV."""
    from lumina_rt.kernels import cpu

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    cfg = bench_model().config
    b, n, hq, hk, dh = 2, 4096, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    g = torch.Generator().manual_seed(3)
    q = torch.randn(b, n, hq, dh, generator=g).to(dtype)
    k, v = (torch.randn(b, n, hk, dh, generator=g).to(dtype) for _ in range(2))
    yk, yv = (torch.randn(b, CAP_LEN, hk, dh, generator=g).to(dtype) for _ in range(2))
    y_mask = torch.ones(b, CAP_LEN, dtype=torch.bool)
    gate = torch.randn(hq, generator=g).to(dtype)
    args = (q, k, v, None, yk, yv, y_mask, gate)
    eager, fused = ops.TORCH_IMPLS["gated_attention"], cpu.gated_attention
    assert (fused(*args).float() - eager(*args).float()).abs().max() < (1e-4 if dtype_name == "fp32" else 5e-2)
    times: dict[str, list[float]] = {"eager": [], "fused": []}
    with torch.no_grad():
        for rep in range(6):
            for name, fn in (("eager", eager), ("fused", fused)):
                start = time.perf_counter()
                fn(*args)
                if rep:
                    times[name].append((time.perf_counter() - start) * 1e3)
    flops = 4 * b * hq * n * (n + CAP_LEN) * dh
    ceiling = report_rows.CEILINGS.get(f"matmul_{dtype_name}_gflops", float("nan"))
    for name, label in (("eager", "torch eager (SDPA)"), ("fused", "C++ kernel")):
        ms = statistics.median(times[name])
        gflops = flops / (ms * 1e-3) / 1e9
        row = dict(impl=label, dtype=dtype_name, shape=f"q [{b}, {n}, {hq}, {dh}], kv heads {hk}, caption {CAP_LEN}",
                   ms=ms, gflops=gflops, pct_of_matmul=100 * gflops / ceiling)  # fmt: skip
        report_rows.add("Attention op (self + gated cross, one block)", row)


@pytest.mark.parametrize("backend", ["torch", "cpu-fused"])
@pytest.mark.parametrize("dtype_name", ["fp32", "bf16"])
def test_attention_share(dtype_name, backend):
    """Share of one 1x2 step spent in attention (self + gated cross), from the torch profiler.

    `ops.gated_attention` is one profiler range ("lumina_rt.gated_attention") around whichever implementation runs:
    PyTorch's SDPA (torch) or the C++ kernel (cpu-fused).
    """
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    model = bench_model(dtype)
    x, t, cap, mask, motion = bench_inputs(2, dtype)
    with torch.no_grad(), ops.use_backend(backend):
        model.velocity(x, t, cap, mask, motion, "1x2")  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            with torch.profiler.record_function("bench.step"):
                model.velocity(x, t, cap, mask, motion, "1x2")
    totals = {e.key: e.cpu_time_total / 1e3 for e in prof.key_averages()}
    step_ms, attention_ms = totals["bench.step"], totals.get("lumina_rt.gated_attention", 0.0)
    assert 0 < attention_ms < step_ms
    label = {"torch": "torch eager", "cpu-fused": "torch+cpu-fused"}[backend]
    row = dict(backend=label, dtype=dtype_name, step_ms=step_ms, attention_ms=attention_ms,
               attention_pct=100 * attention_ms / step_ms, other_ms=step_ms - attention_ms)  # fmt: skip
    report_rows.add("Attention share of one step (torch profiler; 1x2, batch 2)", row)
    report_rows.SUMMARY.setdefault("attention_share", dict(value=None, sizes=f"{SIZES}; 1x2, batch 2, profiler"))
    report_rows.SUMMARY["attention_share"][f"{backend} {dtype_name}"] = row["attention_pct"] / 100
    if backend == "cpu-fused" and dtype_name == "bf16":
        report_rows.SUMMARY["attention_share"]["value"] = row["attention_pct"] / 100


def _sample_ms(preset: str, velocity_fn, cache: str | None = None) -> tuple[float, list[str], int]:
    """Median wall ms of one sampling run, the patch combo of each model evaluation, and the model FLOPs spent."""
    cfg = bench_model().config
    sc = SampleConfig.from_name(preset).replace(step=E2E_STEPS)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, *LATENT, generator=g)
    pos = Conditioning(torch.randn(1, CAP_LEN, cfg.cap_feat_dim, generator=g), torch.ones(1, CAP_LEN, dtype=torch.long))
    neg = Conditioning(torch.randn(1, 8, cfg.cap_feat_dim, generator=g), torch.ones(1, 8, dtype=torch.long))
    combos: list[str] = []

    policy = StepCache.from_setting(cache)
    counters: list[FlopCount] = []

    def run():
        combos.clear()
        counters[:] = [FlopCount(cfg, 1)]
        with torch.no_grad():
            return sample_euler(counters[0].wrap(velocity_fn), z, pos, neg, sc, progress=False,
                                cache=policy and policy.start(), callback=lambda k, t, c: combos.append(c))  # fmt: skip

    return report_rows.median_ms(run, reps=2, warmup=0), list(combos), counters[0].total


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_end_to_end_multiscale_vs_single(backend):
    """End-to-end sampling with the released f24F96R960 schedules (single vs multi-scale), same steps and backend."""
    if backend == "onnxruntime":
        report_rows.needs_onnx("multiscale_over_single")
    velocity_fn = _ort_runtime().engines.velocity if backend == "onnxruntime" else bench_model().velocity
    single_ms, single_combos, single_flops = _sample_ms("f24F96R960", velocity_fn)
    multi_ms, multi_combos, multi_flops = _sample_ms("f24F96R960-MultiScale", velocity_fn)
    assert set(single_combos) == {"1x2"} and {"2x4", "2x2", "1x2"} <= set(multi_combos)
    ratio = multi_ms / single_ms
    runs = (("f24F96R960", single_ms, single_combos, single_flops),
            ("f24F96R960-MultiScale", multi_ms, multi_combos, multi_flops))  # fmt: skip
    for name, ms, combos, flops in runs:
        schedule = " ".join(f"{c}×{combos.count(c)}" for c in ("2x4", "2x2", "1x2"))
        row = dict(backend=backend, preset=name, steps=E2E_STEPS, schedule=schedule, seconds=ms / 1e3,
                   model_gflop=flops / 1e9)  # fmt: skip
        report_rows.add("End-to-end sampling (fp32, CFG on)", row)
    key = "multiscale_over_single" if backend == "onnxruntime" else "multiscale_over_single_torch_eager"
    report_rows.SUMMARY[key] = dict(
        value=ratio, flops=multi_flops / single_flops,
        sizes=f"{SIZES}; {E2E_STEPS} Euler steps, {backend} fp32, released f24F96R960 schedules",
    )  # fmt: skip


def test_end_to_end_step_cache():
    """End-to-end sampling with step caching ("safe") against uncached, single- and multi-scale, ONNX Runtime fp32."""
    report_rows.needs_onnx("cache_over_uncached")
    velocity_fn = _ort_runtime().engines.velocity
    times, evals, flops = {}, {}, {}
    for preset in ("f24F96R960", "f24F96R960-MultiScale"):
        for cache in (None, "safe"):
            ms, combos, spent = _sample_ms(preset, velocity_fn, cache)
            times[preset, cache], evals[preset, cache], flops[preset, cache] = ms, len(combos), spent
            row = dict(preset=preset, cache=cache or "off", evaluations=len(combos), seconds=ms / 1e3,
                       model_gflop=spent / 1e9)  # fmt: skip
            report_rows.add("End-to-end sampling with step caching (onnxruntime fp32, CFG on)", row)
    ratios = {p: times[p, "safe"] / times[p, None] for p in ("f24F96R960", "f24F96R960-MultiScale")}
    report_rows.SUMMARY["cache_over_uncached"] = dict(
        value=ratios["f24F96R960"], per_schedule=ratios,
        flops={p: flops[p, "safe"] / flops[p, None] for p in ("f24F96R960", "f24F96R960-MultiScale")},
        evaluations={f"{p} {c or 'off'}": n for (p, c), n in evals.items()},
        sizes=f"{SIZES}; {E2E_STEPS} Euler steps, onnxruntime fp32, cache 'safe'",
    )  # fmt: skip
    report_rows.SUMMARY["multiscale_cached_over_single_uncached"] = dict(
        value=times["f24F96R960-MultiScale", "safe"] / times["f24F96R960", None],
        flops=flops["f24F96R960-MultiScale", "safe"] / flops["f24F96R960", None],
        sizes=f"{SIZES}; {E2E_STEPS} Euler steps, onnxruntime fp32",
    )


def test_engine_over_model():
    """An engine call (EngineSet.velocity: patchify, RoPE tables, profile choice, unpatchify around the model) over
    the bare model at the engine's precision with the same kernels, per scale and torch engine backend
    (bench/engine_overhead.py; timed in turns, median of 5). Goal (issue 27): <= 1.1 at every scale."""
    from engine_overhead import measure

    per_scale: dict[str, dict[str, float]] = {}
    for backend, precision in (
        ("torch-cpu-fused", "bf16"),
        ("torch-cpu-fused", "fp32"),
        ("torch", "fp32"),
        ("torch-compiled", "bf16"),
    ):
        if backend == "torch-cpu-fused" and "cpu-fused" not in ops.available_backends():
            continue
        result = measure(precision, backend)
        for combo in ("1x2", "2x2", "2x4"):
            r = result[combo]
            per_scale.setdefault(f"{backend} {precision}", {})[combo] = r["engine_over_model"]
            report_rows.add("Engine call vs bare model (batch 2)", dict(backend=backend, precision=precision,
                            combo=combo, engine_ms=r["engine_ms"], model_ms=r["model_ms"],
                            engine_over_model=r["engine_over_model"]))  # fmt: skip
    report_rows.SUMMARY["engine_over_model"] = dict(
        value=max(v for rows in per_scale.values() for v in rows.values()), per_scale=per_scale,
        sizes=f"{SIZES}; torch engines, batch 2, median of 5; worst backend and scale as the value",
    )  # fmt: skip


RELEASED_STEPS = 70  # every released preset's grid points
# "floor": every step predicted that the segment rules allow (two evaluations per segment, the last step): the fewest
# FLOPs any policy that reuses nothing across a segment switch can spend on these schedules (quality not held)
FLOOR = StepCache(math.inf, max_skips=None, guidance=math.inf, name="floor")
LEVELS_70 = ("off", "safe", "safe+cfg", "fast", "floor")


def _psnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR of a final latent against a reference latent, with the reference's value range as the peak."""
    mse = float((out.float() - ref.float()).pow(2).mean())
    peak = float(ref.max() - ref.min())
    return 99.0 if mse == 0 else min(99.0, 10 * math.log10(peak**2 / mse))


def test_end_to_end_released_70_points():
    """The released f24F96R960 presets at their 70 grid points (60 of 69 steps guided), one run each: single- vs
    multi-scale, uncached vs `safe` vs `safe+cfg`; wall time, model FLOPs spent, and PSNR of the final latent
    against the same schedule's uncached run. The step runs the bf16 model with the C++ fused ops where the CPU has
    both (fp32 torch otherwise), as the engines `auto` picks here."""
    from plots import decisions

    from lumina_rt.engines.torch_engine import cpu_has_native_bf16

    fused = "cpu-fused" in ops.available_backends()
    dtype = torch.bfloat16 if fused and cpu_has_native_bf16() else torch.float32
    kernels = "cpu-fused" if fused else "torch"
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    model = bench_model(dtype)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, *LATENT, generator=g)
    pos = Conditioning(torch.randn(1, CAP_LEN, cfg.cap_feat_dim, generator=g), torch.ones(1, CAP_LEN, dtype=torch.long))
    neg = Conditioning(torch.randn(1, 8, cfg.cap_feat_dim, generator=g), torch.ones(1, 8, dtype=torch.long))

    def velocity(x, t, cap, mask, motion, combo):
        return model.velocity(x.to(dtype), t.to(dtype), cap.to(dtype), mask, motion, combo).float()

    runs: dict[tuple[str, str], dict] = {}
    data: dict[str, list] = {}
    for preset in ("f24F96R960", "f24F96R960-MultiScale"):
        sc = SampleConfig.from_name(preset)
        assert sc.step == RELEASED_STEPS
        for level in LEVELS_70:
            policy = FLOOR if level == "floor" else StepCache.from_setting(level)
            run = policy and policy.start()
            counter = FlopCount(cfg, 1)
            start = time.perf_counter()
            with torch.no_grad(), ops.use_backend(kernels):
                out = sample_euler(counter.wrap(velocity), z, pos, neg, sc, progress=False, cache=run)
            seconds = time.perf_counter() - start
            ref = runs.get((preset, "off"), {}).get("out", out)
            runs[preset, level] = dict(out=out, seconds=seconds, flops=counter.total, psnr=_psnr_db(out, ref),
                                       evaluations=run.evaluations if run else RELEASED_STEPS - 1,
                                       guidance_reused=run.guidance_reused if run else 0)  # fmt: skip
            if run is not None and level != "floor":
                data[f"{preset} {level}"] = decisions(run, sc)
    base = runs["f24F96R960", "off"]
    for (preset, level), r in runs.items():
        row = dict(preset=preset, cache=level, evaluations=r["evaluations"], negatives_skipped=r["guidance_reused"],
                   seconds=r["seconds"], time_over_single_uncached=r["seconds"] / base["seconds"],
                   flops_over_single_uncached=r["flops"] / base["flops"],
                   psnr_db_vs_uncached=None if level == "off" else r["psnr"])  # fmt: skip
        report_rows.add(f"Released presets at 70 grid points ({precision}, {kernels} ops, CFG on)", row)
    sizes = f"{SIZES}; {RELEASED_STEPS} grid points, {precision} model with {kernels} ops, one run each"
    multi = "f24F96R960-MultiScale"
    report_rows.SUMMARY["multiscale_over_single_70"] = dict(
        value=runs[multi, "off"]["seconds"] / base["seconds"], flops=runs[multi, "off"]["flops"] / base["flops"],
        sizes=sizes,
    )  # fmt: skip
    report_rows.SUMMARY["cache_over_uncached_70"] = {
        level: {p: dict(value=runs[p, level]["seconds"] / runs[p, "off"]["seconds"],
                        flops=runs[p, level]["flops"] / runs[p, "off"]["flops"], psnr_db=runs[p, level]["psnr"],
                        evaluations=runs[p, level]["evaluations"]) for p in ("f24F96R960", multi)}
        for level in LEVELS_70[1:]
    }  # fmt: skip
    report_rows.SUMMARY["cache_over_uncached_70"]["sizes"] = sizes
    best = runs[multi, "safe+cfg"]
    report_rows.SUMMARY["multiscale_cached_over_single_uncached_70"] = dict(
        value=best["seconds"] / base["seconds"], flops=best["flops"] / base["flops"], psnr_db=best["psnr"],
        evaluations=best["evaluations"], negatives_skipped=best["guidance_reused"],
        sizes=f"{sizes}; multi-scale + safe+cfg over single-scale uncached; PSNR vs uncached multi-scale",
    )  # fmt: skip
    report_rows.SUMMARY["decisions_70"] = data
    assert best["flops"] < runs[multi, "off"]["flops"] < base["flops"]
