"""Check and time every GPU path of lumina_rt in one call (≤ 10 minutes on one H100).

    python bench/gpu_check.py [--json OUT.json] [--steps 3] [--skip-2b]

1. parity on CUDA: the public fixture through the torch model with kernel backends torch and triton (fp32, TF32 off);
2. Triton kernel micro-benchmarks vs torch eager, GB/s against the measured copy bandwidth (bench/gpu_kernels.py);
3. the released 2B-GQA shape (random weights, bf16) at 1248×704, 96 frames (latent 16×88×156): a few steps per
   patch size with eager ops vs fused Triton ops, achieved TFLOP/s against the measured bf16 matmul rate, and the
   multi-scale / single-scale end-to-end ratio of the released f24F96R960 presets computed from those step times.

Writes a JSON report (default $OUT/gpu_check.json when $OUT is set). Exits 1 if any check fails.
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


def time_2b(report: dict, steps: int) -> None:
    import torch
    from torch.nn.attention import sdpa_kernel

    from lumina_rt import ops
    from lumina_rt.config import ModelConfig
    from lumina_rt.engines.torch_engine import placement
    from lumina_rt.flops import forward_flops, token_count
    from lumina_rt.model import MultiScaleNextDiT
    from lumina_rt.sampling import SampleConfig, time_aware_value, time_grid

    cfg = ModelConfig.from_name("f24R960")
    frames, height, width = 16, 88, 156
    cap_len = 128
    bf16_peak = matmul_tflops(torch.bfloat16)
    _log(f"bf16 matmul 8192^3: {bf16_peak:.1f} TFLOP/s")
    # What a `lumina-rt build --target torch --precision bf16` engine runs on CUDA: bf16 parameters, SDPA's fused
    # attention kernels only (lumina_rt.engines.torch_engine.placement).
    where = placement("bf16", "cuda")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = MultiScaleNextDiT(cfg).to(where.dtype).eval()
    model.check_inputs = False
    rows = []
    step_ms: dict[tuple[str, int, str], float] = {}
    for combo in cfg.patch_combos:
        n = token_count(cfg, combo, frames, height, width)
        for batch in (1, 2):
            x = torch.randn(batch, cfg.in_channels, frames, height, width, device="cuda", dtype=torch.bfloat16)
            t = torch.rand(batch, device="cuda")
            cap = torch.randn(batch, cap_len, cfg.cap_feat_dim, device="cuda", dtype=torch.bfloat16)
            mask = torch.ones(batch, cap_len, device="cuda", dtype=torch.long)
            motion = torch.full((batch,), 6.0, device="cuda")
            flops = forward_flops(cfg, combo, n, cap_len, batch)
            step = functools.partial(model.velocity, x, t, cap, mask, motion, combo)
            for backend in ("torch", "triton"):
                with ops.use_backend(backend), torch.no_grad(), sdpa_kernel(list(where.sdpa or ())):
                    ms = _bench_ms(step, warmup=1, reps=steps)
                step_ms[(combo, batch, backend)] = ms
                tflops = flops / (ms * 1e-3) / 1e12
                rows.append(dict(combo=combo, batch=batch, backend=backend, tokens=n, ms=ms, tflops=tflops,
                                 pct_of_bf16_matmul=100 * tflops / bf16_peak))  # fmt: skip
                _log(f"2B-GQA {combo} B={batch} {backend:<6} {ms:9.1f} ms  {tflops:6.1f} TFLOP/s "
                     f"({100 * tflops / bf16_peak:.0f}% of matmul)")  # fmt: skip
            del x, cap, step
            torch.cuda.empty_cache()

    def end_to_end(preset: str, backend: str) -> float:
        sc = SampleConfig.from_name(preset)
        grid = time_grid(sc.step, sc.ts).tolist()
        total = 0.0
        for t in grid[:-1]:
            combo = str(time_aware_value(sc.P, t))
            batch = 2 if float(time_aware_value(sc.cfg, t)) > 0 else 1
            total += step_ms[(combo, batch, backend)]
        return total

    e2e = {}
    for backend in ("torch", "triton"):
        single = end_to_end("f24F96R960", backend)
        multi = end_to_end("f24F96R960-MultiScale", backend)
        e2e[backend] = dict(single_s=single / 1e3, multi_s=multi / 1e3, multiscale_over_single=multi / single)
        _log(f"70-step e2e ({backend}): single {single / 1e3:.1f} s, multi-scale {multi / 1e3:.1f} s, "
             f"ratio {multi / single:.3f}")  # fmt: skip
    fused_speedup = e2e["torch"]["multi_s"] / e2e["triton"]["multi_s"]
    report["2b_gqa"] = dict(latent=[16, frames, height, width], cap_len=cap_len, bf16_matmul_tflops=bf16_peak,
                            rows=rows, end_to_end=e2e, fused_over_eager_speedup=fused_speedup)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="report path (default $OUT/gpu_check.json when $OUT is set)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per (patch size, batch, backend)")
    parser.add_argument("--skip-2b", action="store_true", help="skip the 2B-GQA timing")
    args = parser.parse_args(argv)

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
    ok = check_parity(report)
    ok &= check_kernels(report)
    if not args.skip_2b:
        time_2b(report, args.steps)
    out = args.json or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
        _log(f"report written to {out}")
    _log("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
