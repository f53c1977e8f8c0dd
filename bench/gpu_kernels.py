"""Triton fused ops on one CUDA GPU at the released 2B shapes: correctness against the reference, time against torch
eager, achieved GB/s against the device's copy bandwidth.

    python bench/gpu_kernels.py [--json OUT.json] [--batch 2] [--dtype bf16]

Shapes (Lumina-Video 2B-GQA, a 16 x 88 x 156 latent with 16 channels patched 1x2, i.e. 16*44*78 = 54912 tokens):
modulation ops on x [B, 54912, 2304]; RoPE on q [B, 54912, 16, 144] and k [B, 54912, 8, 144]; (un)patchify of the
latent [B, 16, 16, 88, 156] with every released patch combo. Times are medians of `triton.testing.do_bench`.
A row is `correct` when the kernel's max error against the float64 reference is at most twice torch eager's (same
inputs, same dtype) plus a small atol; GB/s counts the bytes each op must read and write once; the target is >= 85%
of the measured copy bandwidth. `run_all()` is what bench/gpu_check.py calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

EPS = 1e-6
TARGET_PCT_OF_COPY = 85.0
ATOL = {"fp32": 1e-5, "bf16": 1e-2, "fp16": 1e-3}
FRAMES, HEIGHT, WIDTH, CHANNELS = 16, 88, 156, 16
DIM, N_HEADS, N_KV_HEADS, HEAD_DIM = 2304, 16, 8, 144
COMBOS = ((1, 2, 2), (2, 2, 2), (2, 4, 4))


def _require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_kernels.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing to do")


def _do_bench(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_gbps() -> float:
    """Read + write bandwidth of a 1 GiB device-to-device tensor copy."""
    import torch

    x = torch.empty(256 * 1024 * 1024, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    ms = _do_bench(lambda: y.copy_(x))
    return 2 * _nbytes(x) / (ms * 1e-3) / 1e9


def _max_err(out, ref) -> float:
    return float((out.double() - ref).abs().max())


def _nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _rule(outs, ref64s, eagers, atol: float) -> tuple[bool, float, float]:
    """(correct, kernel error, eager error) over the op's outputs."""
    errs = [_max_err(o, r) for o, r in zip(outs, ref64s)]
    torch_errs = [_max_err(e, r) for e, r in zip(eagers, ref64s)]
    finite = all(bool(o.isfinite().all()) for o in outs)
    ok = finite and all(e <= 2 * t + atol for e, t in zip(errs, torch_errs))
    return ok, max(errs), max(torch_errs)


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _case(name, dtype_name, shape, triton_fn, eager_fn, ref64_fn, bytes_moved, exact=False) -> dict:
    """Check and time one op; frees its temporaries."""
    import torch

    outs, eagers = _tuple(triton_fn()), _tuple(eager_fn())
    if exact:  # data movement: bit-exact against eager
        ok = all(torch.equal(o, e) for o, e in zip(outs, eagers))
        err = torch_err = 0.0 if ok else float("nan")
    else:
        ok, err, torch_err = _rule(outs, _tuple(ref64_fn()), eagers, ATOL[dtype_name])
    outs = eagers = None
    torch.cuda.empty_cache()
    triton_ms, eager_ms = _do_bench(triton_fn), _do_bench(eager_fn)
    gbps = bytes_moved / (triton_ms * 1e-3) / 1e9
    return dict(op=name, dtype=dtype_name, shape=shape, correct=bool(ok), max_err=err, torch_err=torch_err,
                triton_ms=triton_ms, eager_ms=eager_ms, speedup=eager_ms / triton_ms, gbps=gbps)  # fmt: skip


def _f64(*ts):
    return [t.double() for t in ts]


def _modulation_rows(batch: int, n: int, dtype, dtype_name: str, g) -> list[dict]:
    import torch

    from lumina_rt import ops

    EAGER = ops.TORCH_IMPLS
    from lumina_rt.kernels import modulate, registry

    k = registry.TRITON_IMPLS
    x = torch.randn(batch, n, DIM, device="cuda", generator=g).to(dtype)
    y = torch.randn(batch, n, DIM, device="cuda", generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(DIM, device="cuda", generator=g)).to(dtype)
    s = (0.5 * torch.randn(batch, DIM, device="cuda", generator=g)).to(dtype)
    shape = f"x [{batch}, {n}, {DIM}]"
    return [
        _case("rmsnorm_modulate", dtype_name, shape,
              lambda: k["rmsnorm_modulate"](x, w, s, EPS), lambda: EAGER["rmsnorm_modulate"](x, w, s, EPS),
              lambda: modulate.rmsnorm_modulate_ref(*_f64(x, w, s), EPS), 2 * _nbytes(x)),
        _case("gated_residual", dtype_name, shape,
              lambda: k["gated_residual"](x, y, w, s, EPS), lambda: EAGER["gated_residual"](x, y, w, s, EPS),
              lambda: modulate.gated_residual_ref(*_f64(x, y, w, s), EPS), 3 * _nbytes(x)),
        _case("layernorm_modulate", dtype_name, shape,
              lambda: k["layernorm_modulate"](x, s, EPS), lambda: EAGER["layernorm_modulate"](x, s, EPS),
              lambda: modulate.layernorm_modulate_ref(*_f64(x, s), EPS), 2 * _nbytes(x)),
    ]  # fmt: skip


def _rope_rows(batch: int, n: int, dtype, dtype_name: str, g) -> list[dict]:
    import torch

    from lumina_rt import ops

    EAGER = ops.TORCH_IMPLS
    from lumina_rt.kernels import registry, rope

    fn = registry.TRITON_IMPLS["rope_qk"]
    q = torch.randn(batch, n, N_HEADS, HEAD_DIM, device="cuda", generator=g).to(dtype)
    k = torch.randn(batch, n, N_KV_HEADS, HEAD_DIM, device="cuda", generator=g).to(dtype)
    ang = torch.rand(n, HEAD_DIM // 2, device="cuda", generator=g) * 6.28
    cos, sin = ang.cos(), ang.sin()
    shape = f"q [{batch}, {n}, {N_HEADS}, {HEAD_DIM}], k [{batch}, {n}, {N_KV_HEADS}, {HEAD_DIM}]"
    return [
        _case("rope_qk", dtype_name, shape, lambda: fn(q, k, cos, sin), lambda: EAGER["rope_qk"](q, k, cos, sin),
              lambda: rope.rope_qk_ref(*_f64(q, k, cos, sin)), 2 * _nbytes(q, k)),
    ]  # fmt: skip


def _patchify_rows(batch: int, dtype, dtype_name: str, g) -> list[dict]:
    import torch

    from lumina_rt import ops

    EAGER = ops.TORCH_IMPLS
    from lumina_rt.kernels import registry

    k = registry.TRITON_IMPLS
    lat = torch.randn(batch, CHANNELS, FRAMES, HEIGHT, WIDTH, device="cuda", generator=g).to(dtype)
    rows = []
    for combo in COMBOS:
        tokens = EAGER["patchify"](lat, *combo)
        dims = (FRAMES, HEIGHT, WIDTH, *combo)
        shape = f"[{batch}, {CHANNELS}, {FRAMES}, {HEIGHT}, {WIDTH}] {combo}"
        rows += [
            _case("patchify", dtype_name, shape, lambda c=combo: k["patchify"](lat, *c),
                  lambda c=combo: EAGER["patchify"](lat, *c), None, 2 * _nbytes(lat), exact=True),
            _case("unpatchify", dtype_name, shape, lambda t=tokens, d=dims: k["unpatchify"](t, *d),
                  lambda t=tokens, d=dims: EAGER["unpatchify"](t, *d), None, 2 * _nbytes(lat), exact=True),
        ]  # fmt: skip
    return rows


def run_all(batch: int = 2, dtype_name: str = "bf16") -> list[dict]:
    """Every Triton op at the 2B shapes: correctness, time, GB/s and % of copy bandwidth (rows of dicts)."""
    _require_cuda()
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    ceiling = copy_gbps()
    g = torch.Generator(device="cuda").manual_seed(0)
    n = FRAMES * (HEIGHT // 2) * (WIDTH // 2)  # tokens after 1x2 patching
    rows = _modulation_rows(batch, n, dtype, dtype_name, g)
    torch.cuda.empty_cache()
    rows += _rope_rows(batch, n, dtype, dtype_name, g)
    torch.cuda.empty_cache()
    rows += _patchify_rows(batch, dtype, dtype_name, g)
    for r in rows:
        r["copy_gbps"] = ceiling
        r["pct_of_copy"] = 100 * r["gbps"] / ceiling
        r["meets_target"] = r["pct_of_copy"] >= TARGET_PCT_OF_COPY
    return rows


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'op':<20}{'dtype':<6}{'ok':<4}{'triton ms':>10}{'eager ms':>10}{'speedup':>9}{'GB/s':>8}{'% copy':>8}  shape"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['op']:<20}{r['dtype']:<6}{'yes' if r['correct'] else 'NO':<4}{r['triton_ms']:>10.3f}"
            f"{r['eager_ms']:>10.3f}{r['speedup']:>8.1f}x{r['gbps']:>8.0f}{r['pct_of_copy']:>7.0f}%  {r['shape']}"
        )
    if rows:
        lines.append(
            f"device copy bandwidth: {rows[0]['copy_gbps']:.0f} GB/s; target >= {TARGET_PCT_OF_COPY:.0f}% of it"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the rows (and device info) to this JSON file")
    parser.add_argument("--batch", type=int, default=2, help="batch size (2 = a CFG pair; default 2)")
    parser.add_argument("--dtype", choices=sorted(ATOL), default="bf16", help="activation dtype (default bf16)")
    args = parser.parse_args(argv)
    _require_cuda()
    import torch

    rows = run_all(args.batch, args.dtype)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(format_table(rows))
    if args.json:
        info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
