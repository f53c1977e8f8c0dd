"""Check and time every GPU path of lumina_rt in one call (≤ 8 minutes on one H100).

    python bench/gpu_check.py [--json OUT.json] [--steps 3] [--skip-2b] [--skip SECTION ...] [--budget-s 480]
                              [--compile-mode MODE]

Sections (each independent: one that fails is recorded under "errors" and the others still run):

1. parity: the public fixture on CUDA through the torch model with kernel backends torch and triton (fp32, TF32 off);
2. kernels: Triton kernel micro-benchmarks vs torch eager, GB/s against the measured copy bandwidth
   (bench/gpu_kernels.py);
3. 2b: the released 2B-GQA shape (random weights, bf16) at 1248×704, 96 frames (latent 16×88×156): a few steps per
   patch size with eager ops vs fused Triton ops, achieved TFLOP/s against the measured bf16 matmul rate, and the
   multi-scale / single-scale end-to-end ratio of the released f24F96R960 presets computed from those step times;
4. compiled: the torch-compiled-cuda engine's compile (lumina_rt.engines.compiled_engine: `--compile-mode`, default
   its own, max-autotune-no-cudagraphs) at the same shape, batch 2 per scale: compile time and step time vs eager
   and Triton (coarse scales first; a scale whose compile would not fit the budget is skipped, saying so);
5. caching: step caching and guidance reuse on the released presets at their 70 grid points. Running them at the
   2B shape does not fit the budget (69 steps of seconds each per run), so the policy's decisions come from real runs
   of the bench model (small size, random weights, latent 4×16×32×32, on this GPU; PSNR of the final latent vs the
   uncached run) and the end-to-end time of the released shape is priced from the measured 2B step times of every
   evaluation (per scale and batch: 2 rows for both guidance branches, 1 for the positive alone);
6. gemma: the released text encoder's architecture (Gemma-2-2B, random weights, bf16), one encoding of a CFG pair of
   256-token prompts (what GemmaTextEncoder.encode runs);
7. vae: the released decoder's architecture (CogVideoX-2b VAE, random weights, bf16, tiled as the released
   pipeline decodes), 8 latent frames at 704×1248 (32 frames) timed and the 96-frame clip's decode priced per
   latent frame pair.

`--budget-s` (default 480): sections after it is spent are skipped with the reason. Writes a JSON report (default
$OUT/gpu_check.json when $OUT is set). Exits 1 if any check fails or a section raised.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _bench_ms(fn, warmup: int = 2, reps: int = 5) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def matmul_tflops(dtype) -> float:
    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    ms = _bench_ms(lambda: a @ b, warmup=3, reps=10)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def check_parity(report: dict) -> bool:
    import torch

    from lumina_rt import ops
    from lumina_rt.model import MultiScaleNextDiT
    from lumina_rt.parity import ModelParityTarget, load_fixture, run_parity

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    fixture_path = Path(os.environ.get("LUMINA_FIXTURES", REPO.parent / "shared" / "fixtures"))
    fixture_path = fixture_path / "lumina_parity_public.safetensors"
    if not fixture_path.exists():
        _log(f"parity: fixture {fixture_path} not found; skipped")
        report["parity"] = {"skipped": f"{fixture_path} not found"}
        return True
    fx = load_fixture(fixture_path)
    fx.tensors = {k: v.cuda() for k, v in fx.tensors.items()}
    model = MultiScaleNextDiT(fx.config).cuda().eval()
    model.load_state_dict(fx.state_dict, strict=True)
    ok = True
    report["parity"] = {}
    for backend in ("torch", "triton"):
        with ops.use_backend(backend):
            results = run_parity(fx, ModelParityTarget(model))
        worst = max(r.rel_err for r in results)
        passed = all(r.passed for r in results)
        ok &= passed
        report["parity"][backend] = {"max_rel_err": worst, "passed": passed}
        _log(f"parity cuda/{backend}: {'PASS' if passed else 'FAIL'} max rel err {worst:.3e}")
    return ok


def check_kernels(report: dict) -> bool:
    try:
        import gpu_kernels  # beside this script: Python puts its folder first on the import path
    except ImportError as exc:
        _log(f"kernels: bench/gpu_kernels.py not importable ({exc}); skipped")
        report["kernels"] = {"skipped": str(exc)}
        return False
    rows = gpu_kernels.run_all()
    report["kernels"] = rows
    return all(r.get("correct", True) for r in rows)


# The released 2B-GQA shape: f24R960 at 1248×704, 96 frames = 24 latent frames of 88×156 (CogVideoX VAE: ×4 in time,
# ×8 in space), a 128-token caption.
LATENT_2B = (24, 88, 156)
CAP_2B = 128
PRESETS = ("f24F96R960", "f24F96R960-MultiScale")


@functools.cache
def model_2b():
    """The 2B-GQA model (random weights) as a bf16 torch engine runs it on CUDA, built once for every section."""
    import torch

    from lumina_rt.config import ModelConfig
    from lumina_rt.engines.torch_engine import placement
    from lumina_rt.model import MultiScaleNextDiT

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = MultiScaleNextDiT(ModelConfig.from_name("f24R960")).to(placement("bf16", "cuda").dtype).eval()
    model.check_inputs = False
    return model


def inputs_2b(batch: int):
    """(x, t, cap, mask, motion) of the released shape, bf16 on CUDA."""
    import torch

    cfg = model_2b().config
    g = torch.Generator(device="cuda").manual_seed(batch)
    x = torch.randn(batch, cfg.in_channels, *LATENT_2B, device="cuda", dtype=torch.bfloat16, generator=g)
    t = torch.rand(batch, device="cuda", generator=g)
    cap = torch.randn(batch, CAP_2B, cfg.cap_feat_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    mask = torch.ones(batch, CAP_2B, device="cuda", dtype=torch.long)
    return x, t, cap, mask, torch.full((batch,), 6.0, device="cuda")


def step_plan(preset: str) -> list[tuple[str, int]]:
    """(patch combo, rows) of every model call of an uncached run of a released preset (2 rows: guided)."""
    from lumina_rt.sampling import SampleConfig, time_aware_value, time_grid

    sc = SampleConfig.from_name(preset)
    plan = []
    for t in time_grid(sc.step, sc.ts).tolist()[:-1]:
        plan.append((str(time_aware_value(sc.P, t)), 2 if float(time_aware_value(sc.cfg, t)) > 0 else 1))
    return plan


def time_2b(report: dict, steps: int) -> None:
    import torch
    from torch.nn.attention import sdpa_kernel

    from lumina_rt import ops
    from lumina_rt.engines.torch_engine import placement
    from lumina_rt.flops import forward_flops, token_count

    frames, height, width = LATENT_2B
    bf16_peak = matmul_tflops(torch.bfloat16)
    _log(f"bf16 matmul 8192^3: {bf16_peak:.1f} TFLOP/s")
    # What a `lumina-rt build --target torch --precision bf16` engine runs on CUDA: bf16 parameters, SDPA's fused
    # attention kernels only (lumina_rt.engines.torch_engine.placement).
    where = placement("bf16", "cuda")
    model = model_2b()
    cfg = model.config
    rows = []
    for combo in cfg.patch_combos:
        n = token_count(cfg, combo, frames, height, width)
        for batch in (1, 2):
            args = inputs_2b(batch)
            flops = forward_flops(cfg, combo, n, CAP_2B, batch)
            step = functools.partial(model.velocity, *args, combo)
            for backend in ("torch", "triton"):
                with ops.use_backend(backend), torch.no_grad(), sdpa_kernel(list(where.sdpa or ())):
                    ms = _bench_ms(step, warmup=1, reps=steps)
                tflops = flops / (ms * 1e-3) / 1e12
                rows.append(dict(combo=combo, batch=batch, backend=backend, tokens=n, ms=ms, tflops=tflops,
                                 pct_of_bf16_matmul=100 * tflops / bf16_peak))  # fmt: skip
                _log(f"2B-GQA {combo} B={batch} {backend:<6} {ms:9.1f} ms  {tflops:6.1f} TFLOP/s "
                     f"({100 * tflops / bf16_peak:.0f}% of matmul)")  # fmt: skip
            del args, step
            torch.cuda.empty_cache()
    step_ms = {(r["combo"], r["batch"], r["backend"]): r["ms"] for r in rows}

    def end_to_end(preset: str, backend: str) -> float:
        return sum(step_ms[(combo, batch, backend)] for combo, batch in step_plan(preset))

    e2e = {}
    for backend in ("torch", "triton"):
        single = end_to_end("f24F96R960", backend)
        multi = end_to_end("f24F96R960-MultiScale", backend)
        e2e[backend] = dict(single_s=single / 1e3, multi_s=multi / 1e3, multiscale_over_single=multi / single)
        _log(f"70-step e2e ({backend}): single {single / 1e3:.1f} s, multi-scale {multi / 1e3:.1f} s, "
             f"ratio {multi / single:.3f}")  # fmt: skip
    fused_speedup = e2e["torch"]["multi_s"] / e2e["triton"]["multi_s"]
    report["2b_gqa"] = dict(latent=[cfg.in_channels, frames, height, width], cap_len=CAP_2B,
                            bf16_matmul_tflops=bf16_peak, rows=rows, end_to_end=e2e,
                            fused_over_eager_speedup=fused_speedup)  # fmt: skip


def measured_step_ms(report: dict) -> dict[tuple[str, int, str], float]:
    """{(combo, batch, backend): ms} from the 2b section's rows (and the compiled section's), {} without them."""
    rows = [*report.get("2b_gqa", {}).get("rows", []), *report.get("compiled", {}).get("rows", [])]
    return {(r["combo"], r["batch"], r["backend"]): r["ms"] for r in rows if "ms" in r}


def time_compiled(report: dict, steps: int, mode: str | None, deadline: float) -> None:
    """torch-compiled-cuda at the released shape, batch 2 per scale (coarse first): compile and step time."""
    import torch
    from torch.nn.attention import sdpa_kernel

    from lumina_rt import ops
    from lumina_rt.config import parse_patch_combo
    from lumina_rt.engines import compiled_engine
    from lumina_rt.engines.torch_engine import placement
    from lumina_rt.model import latent_rope_tables

    mode = mode or compiled_engine.compile_mode("cuda")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compiled_engine.inductor_cache_dir()))
    model = model_2b()
    where = placement("bf16", "cuda")
    x, t, cap, mask, motion = inputs_2b(2)
    eager = measured_step_ms(report)
    rows, compile_s = [], {}
    section = report["compiled"] = dict(mode=mode, batch=2, rows=rows, skipped={})
    for combo in sorted(model.config.patch_combos, key=lambda c: -int(c.split("x")[1])):  # coarse (fewest tokens) first
        # a compile of the finest scale took longest elsewhere; skip a scale when less than 2 of its coarser
        # neighbour's compile time (or 90 s) is left
        needed = 2 * max(compile_s.values(), default=45.0)
        if time.monotonic() + needed > deadline:
            section["skipped"][combo] = f"budget: {deadline - time.monotonic():.0f} s left, about {needed:.0f} s needed"
            _log(f"compiled {combo}: skipped ({section['skipped'][combo]})")
            continue
        pf, p = parse_patch_combo(combo)
        cos, sin = latent_rope_tables(model.config, *LATENT_2B, pf, p, device="cuda")
        with ops.use_backend("torch"):
            tokens = ops.patchify(x, pf, p, p)
        fn = compiled_engine.compile_scale(model, combo, mode)

        def step(fn=fn, tokens=tokens, cos=cos, sin=sin):  # noqa: ANN001, ANN202
            if mode in compiled_engine.CUDA_GRAPH_MODES:
                torch.compiler.cudagraph_mark_step_begin()
            with compiled_engine.compiled_kernels("cuda"), torch.no_grad(), sdpa_kernel(list(where.sdpa or ())):
                return fn(tokens, cos, sin, t, cap, mask, motion)

        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        compile_s[combo] = time.perf_counter() - start
        ms = _bench_ms(step, warmup=1, reps=steps)
        row = dict(combo=combo, batch=2, backend="compiled", ms=ms, compile_s=compile_s[combo])
        for other in ("torch", "triton"):
            if (combo, 2, other) in eager:
                row[f"{other}_over_compiled"] = eager[(combo, 2, other)] / ms
        rows.append(row)
        _log(f"compiled ({mode}) {combo} B=2: compiled in {compile_s[combo]:.1f} s, step {ms:.1f} ms  "
             + "  ".join(f"{k} {v:.2f}x" for k, v in row.items() if k.endswith("_over_compiled")))  # fmt: skip
        del fn, tokens
        torch.cuda.empty_cache()


def bench_model_small():
    """The bench model (bench/test_latency.py: small size, random weights, non-zero gates), bf16 on CUDA."""
    import torch

    from lumina_rt.config import ModelConfig
    from lumina_rt.model import MultiScaleNextDiT

    torch.manual_seed(0)
    model = MultiScaleNextDiT(ModelConfig.from_name("small")).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(s in name for s in ("adaLN", "gate", "final_layer")):
                param.normal_(0, 0.02)
    model.check_inputs = False
    return model.to("cuda", torch.bfloat16)


def time_caching(report: dict) -> None:
    """Step caching and guidance reuse on the released presets at 70 grid points (module docstring, section 5)."""
    import math

    import torch

    from lumina_rt.caching import StepCache
    from lumina_rt.flops import FlopCount
    from lumina_rt.sampling import Conditioning, SampleConfig, sample_euler

    model = bench_model_small()
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, cfg.in_channels, 16, 32, 32, generator=g).cuda()
    pos = Conditioning(torch.randn(1, 32, cfg.cap_feat_dim, generator=g).cuda(),
                       torch.ones(1, 32, dtype=torch.long, device="cuda"))  # fmt: skip
    neg = Conditioning(torch.randn(1, 8, cfg.cap_feat_dim, generator=g).cuda(),
                       torch.ones(1, 8, dtype=torch.long, device="cuda"))  # fmt: skip
    calls: list[tuple[str, int]] = []

    def velocity(x, t, cap, mask, motion, combo):  # noqa: ANN001, ANN202
        calls.append((combo, int(x.shape[0])))
        return model.velocity(x.bfloat16(), t.bfloat16(), cap.bfloat16(), mask, motion, combo).float()

    step_ms = measured_step_ms(report)
    backends = sorted({b for (_, _, b) in step_ms})
    runs: dict[str, dict] = {}
    finals: dict[str, torch.Tensor] = {}
    for preset in PRESETS:
        sc = SampleConfig.from_name(preset)
        for level in ("off", "safe", "safe+cfg", "fast"):
            policy = StepCache.from_setting(level)
            run = policy and policy.start()
            calls.clear()
            counter = FlopCount(cfg, 1)
            start = time.perf_counter()
            with torch.no_grad():
                out = sample_euler(counter.wrap(velocity), z, pos, neg, sc, progress=False, cache=run)
            torch.cuda.synchronize()
            ref = finals.setdefault(preset, out)
            mse = float((out - ref).pow(2).mean())
            peak = float(ref.max() - ref.min())
            psnr = 99.0 if mse == 0 else 10 * math.log10(peak**2 / mse)
            row = dict(evaluations=len(calls), negatives_skipped=run.guidance_reused if run else 0,
                       bench_model_s=time.perf_counter() - start, bench_model_flops=counter.total,
                       psnr_db=None if level == "off" else psnr)  # fmt: skip
            for backend in backends:  # the released shape's time: every evaluation priced with the measured step
                if all((c, b, backend) in step_ms for c, b in calls):
                    row[f"released_s_{backend}"] = sum(step_ms[(c, b, backend)] for c, b in calls) / 1e3
            runs[f"{preset} {level}"] = row
            _log(f"70 points {preset} {level}: {len(calls)} evaluations, " + ", ".join(
                f"{k} {v:.3g}" for k, v in row.items() if v is not None and k != "evaluations"))  # fmt: skip
    base = runs["f24F96R960 off"]
    for row in runs.values():
        for key in [k for k in row if k.startswith("released_s_")]:
            row[key.replace("released_s_", "released_over_single_uncached_")] = row[key] / base[key]
    report["caching"] = dict(bench_latent=[cfg.in_channels, 16, 32, 32], released_latent=[16, *LATENT_2B],
                             runs=runs, priced_with=backends)  # fmt: skip


def time_gemma(report: dict, steps: int) -> None:
    """Gemma-2-2B's architecture (random weights, bf16): one encoding of a CFG pair of 256-token prompts."""
    import torch
    from transformers import Gemma2Config, Gemma2Model

    # google/gemma-2-2b's config
    config = Gemma2Config(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                          num_attention_heads=8, num_key_value_heads=4, head_dim=256, sliding_window=4096,
                          query_pre_attn_scalar=256, final_logit_softcapping=30.0,
                          attn_logit_softcapping=50.0)  # fmt: skip
    with torch.device("cuda"):
        model = Gemma2Model(config).to(torch.bfloat16).eval()
    ids = torch.randint(0, config.vocab_size, (2, 256), device="cuda")
    mask = torch.ones(2, 256, dtype=torch.long, device="cuda")

    def encode():  # noqa: ANN202 (what GemmaTextEncoder.encode runs)
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]

    ms = _bench_ms(encode, warmup=2, reps=max(steps, 5))
    params = sum(p.numel() for p in model.parameters())
    report["gemma"] = dict(params=params, batch=2, tokens=256, ms=ms)
    _log(f"Gemma-2-2B ({params / 1e9:.2f} B params, bf16) encode 2x256 tokens: {ms:.1f} ms")


def time_vae(report: dict) -> None:
    """The CogVideoX-2b VAE's architecture (random weights, bf16, tiled): decode 8 latent frames at 704×1248."""
    import torch
    from diffusers import AutoencoderKLCogVideoX

    with torch.device("cuda"):
        vae = AutoencoderKLCogVideoX().to(torch.bfloat16).eval()  # the defaults are CogVideoX-2b's VAE
    vae.enable_tiling()
    _, height, width = LATENT_2B
    latent_frames = 8
    z = torch.randn(1, 16, latent_frames, height, width, device="cuda", dtype=torch.bfloat16)
    small = torch.randn(1, 16, 2, height, width, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        vae.decode(small)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        frames = vae.decode(z).sample
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    released = seconds * LATENT_2B[0] / latent_frames
    report["vae"] = dict(latent=[16, latent_frames, height, width], frames_out=list(frames.shape), seconds=seconds,
                         released_96_frames_s=released, peak_gib=torch.cuda.max_memory_allocated() / 2**30)  # fmt: skip
    _log(f"CogVideoX VAE decode {latent_frames} latent frames -> {tuple(frames.shape)}: {seconds:.1f} s "
         f"(96 frames, 24 latent: ~{released:.1f} s)")  # fmt: skip


SECTIONS = ("parity", "kernels", "2b", "compiled", "caching", "gemma", "vae")


def run_section(report: dict, name: str, fn, deadline: float) -> bool:  # noqa: ANN001
    """Run one section; an exception is recorded under report["errors"] (the others still run). False on failure."""
    if time.monotonic() > deadline:
        report.setdefault("skipped", {})[name] = "the time budget was spent before this section"
        _log(f"{name}: skipped (budget spent)")
        return True
    start = time.monotonic()
    try:
        ok = fn()
    except Exception as exc:  # noqa: BLE001 (one section's failure must not hide the others)
        import traceback

        report.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        _log(f"{name}: FAILED {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        ok = False
    report.setdefault("section_s", {})[name] = time.monotonic() - start
    import torch

    torch.cuda.empty_cache()  # what the section held (its locals are gone)
    return ok is not False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="report path (default $OUT/gpu_check.json when $OUT is set)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per (patch size, batch, backend)")
    parser.add_argument("--skip-2b", action="store_true", help="skip the 2B-GQA timing (same as --skip 2b)")
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, metavar="SECTION",
                        help=f"sections to skip: {', '.join(SECTIONS)}")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget; later sections skip")
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode of the compiled section (default: the torch-compiled-cuda engine's: "
        "LUMINA_RT_COMPILE_MODE or max-autotune-no-cudagraphs)",
    )
    args = parser.parse_args(argv)
    if args.skip_2b:
        args.skip.append("2b")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = time.monotonic() + args.budget_s

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; this script needs a GPU (run it on the device machine).")
        return 2
    report: dict = {
        "device": torch.cuda.get_device_name(),
        "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__,
    }
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    _log(f"device {report['device']} (sm_{''.join(map(str, report['capability']))}), torch {torch.__version__}")
    sections = {
        "parity": lambda: check_parity(report),
        "kernels": lambda: check_kernels(report),
        "2b": lambda: time_2b(report, args.steps),
        "compiled": lambda: time_compiled(report, args.steps, args.compile_mode, deadline),
        "caching": lambda: time_caching(report),
        "gemma": lambda: time_gemma(report, args.steps),
        "vae": lambda: time_vae(report),
    }
    ok = True
    for name, fn in sections.items():
        if name not in args.skip:
            ok &= run_section(report, name, fn, deadline)
    out = args.json or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
        _log(f"report written to {out}")
    _log("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
