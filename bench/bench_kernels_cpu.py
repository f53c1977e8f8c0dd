"""C++ fused ops (lumina_rt._C via lumina_rt.kernels.cpu) against PyTorch eager (the lumina_rt.ops torch impls).

    python -m pytest bench/bench_kernels_cpu.py -q      # pytest-benchmark; rows also go to bench/report.md
    python bench/bench_kernels_cpu.py                    # prints the table of `kernel_rows()`

Every speedup is eager_ms / fused_ms timed in the same run, on torch.get_num_threads() threads (both sides).
Sizes are realistic CPU shapes: x [1, 4096, 1152] for the modulation ops, q [1, 4096, 8, 144] / k [1, 4096, 4, 144]
for RoPE, a [1, 16, 8, 64, 64] latent for (un)patchify with each released patch combo. GB/s counts the bytes each op
must read and write once; `pct_of_copy` is the time of a plain tensor copy moving the same bytes (timed in the same
run, same cache state) over the fused op's time: 100% means the op runs at copy speed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from lumina_rt import ops

EAGER = ops.TORCH_IMPLS  # the PyTorch eager implementation of each fused op

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
EPS = 1e-6
TARGET_SPEEDUP = 5.0


@dataclass
class Case:
    op: str
    dtype: str
    shape: str
    eager: Callable[[], object]
    fused: Callable[[], object]
    bytes_moved: int


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def cases() -> list[Case]:
    """Every benchmarked (op, dtype) with its inputs (built once, seeded)."""
    from lumina_rt.kernels import cpu  # ImportError when the extension is not built: the benchmark fails

    g = torch.Generator().manual_seed(0)
    out: list[Case] = []
    for name, dt in DTYPES.items():
        b, n, d = 1, 4096, 1152
        x = torch.randn(b, n, d, generator=g).to(dt)
        y = torch.randn(b, n, d, generator=g).to(dt)
        w = (1 + 0.1 * torch.randn(d, generator=g)).to(dt)
        s = (0.5 * torch.randn(b, d, generator=g)).to(dt)
        shape = f"x [{b}, {n}, {d}]"
        out += [
            Case("rmsnorm_modulate", name, shape, lambda x=x, w=w, s=s: EAGER["rmsnorm_modulate"](x, w, s, EPS),
                 lambda x=x, w=w, s=s: cpu.rmsnorm_modulate(x, w, s, EPS), 2 * _nbytes(x)),
            Case("gated_residual", name, shape, lambda x=x, y=y, w=w, s=s: EAGER["gated_residual"](x, y, w, s, EPS),
                 lambda x=x, y=y, w=w, s=s: cpu.gated_residual(x, y, w, s, EPS), 3 * _nbytes(x)),
            Case("layernorm_modulate", name, shape, lambda x=x, s=s: EAGER["layernorm_modulate"](x, s, EPS),
                 lambda x=x, s=s: cpu.layernorm_modulate(x, s, EPS), 2 * _nbytes(x)),
        ]  # fmt: skip
        q = torch.randn(1, 4096, 8, 144, generator=g).to(dt)
        k = torch.randn(1, 4096, 4, 144, generator=g).to(dt)
        ang = torch.rand(4096, 72, generator=g) * 6.28
        cos, sin = ang.cos(), ang.sin()
        out.append(
            Case("rope_qk", name, "q [1, 4096, 8, 144], k [1, 4096, 4, 144]",
                 lambda q=q, k=k, c=cos, s=sin: EAGER["rope_qk"](q, k, c, s),
                 lambda q=q, k=k, c=cos, s=sin: cpu.rope_qk(q, k, c, s), 2 * _nbytes(q, k))
        )  # fmt: skip
        lat = torch.randn(1, 16, 8, 64, 64, generator=g).to(dt)
        for pf, ph, pw in ((1, 2, 2), (2, 2, 2), (2, 4, 4)):
            tokens = EAGER["patchify"](lat, pf, ph, pw)
            combo = f"[1, 16, 8, 64, 64] ({pf},{ph},{pw})"
            dims = (8, 64, 64, pf, ph, pw)
            out += [
                Case("patchify", name, combo, lambda p=dims[3:], x=lat: EAGER["patchify"](x, *p),
                     lambda p=dims[3:], x=lat: cpu.patchify(x, *p), 2 * _nbytes(lat)),
                Case("unpatchify", name, combo, lambda d=dims, t=tokens: EAGER["unpatchify"](t, *d),
                     lambda d=dims, t=tokens: cpu.unpatchify(t, *d), 2 * _nbytes(lat)),
            ]  # fmt: skip
    return out


def interleaved_times(fns: list[Callable[[], object]], reps: int = 15, warmup: int = 2) -> list[list[float]]:
    """Sorted ms of each fn over `reps` rounds, timed in turns (fn0, fn1, ... each round): all see the same load."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    return [sorted(ts) for ts in times]


def copier(bytes_moved: int) -> Callable[[], object]:
    """`dst.copy_(src)` reading and writing `bytes_moved` bytes in all (the ceiling of a one-pass op)."""
    src = torch.randn(max(1, bytes_moved // 8))
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def _check(case: Case) -> None:
    """The fused result equals eager's (bf16: up to one rounding), so a fast wrong kernel cannot pass."""
    a, b = case.fused(), case.eager()
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        tol = 1e-5 if u.dtype == torch.float32 else 2e-2
        torch.testing.assert_close(u.float(), v.float(), rtol=tol, atol=tol * float(v.float().abs().max()))


def _row(case: Case, times: list[list[float]]) -> dict:
    """Report row from sorted (eager, fused, copy) times: medians, and the ratio of minima (robust on a busy host)."""
    eager_ms, fused_ms, copy = (ts[len(ts) // 2] for ts in times)
    return dict(
        op=case.op, dtype=case.dtype, shape=case.shape, threads=torch.get_num_threads(), eager_ms=eager_ms,
        fused_ms=fused_ms, speedup=eager_ms / fused_ms, speedup_min=times[0][0] / times[1][0],
        gbps=case.bytes_moved / (fused_ms * 1e-3) / 1e9, copy_ms=copy, pct_of_copy=100 * copy / fused_ms,
    )  # fmt: skip


def kernel_rows(reps: int = 15) -> list[dict]:
    """Time every case (medians of `reps`; eager, fused and an equal-bytes copy in turns) and return the rows
    {op, dtype, shape, threads, eager_ms, fused_ms, speedup, speedup_min, gbps, copy_ms, pct_of_copy}."""
    rows = []
    for case in cases():
        _check(case)
        rows.append(_row(case, interleaved_times([case.eager, case.fused, copier(case.bytes_moved)], reps)))
    return rows


# ----------------------------------------------------------------------------------------------
# pytest-benchmark
# ----------------------------------------------------------------------------------------------

_CASES: list[Case] | None = None


def _case(op: str, dtype: str, shape_key: str) -> Case:
    global _CASES
    if _CASES is None:
        _CASES = cases()
    return next(c for c in _CASES if c.op == op and c.dtype == dtype and shape_key in c.shape)


def _bench(benchmark, op: str, dtype: str, shape_key: str = "") -> None:
    case = _case(op, dtype, shape_key)
    _check(case)
    benchmark.pedantic(case.fused, rounds=15, iterations=1, warmup_rounds=2)
    # the ratio comes from interleaved timings (eager, fused, copy in turns), robust to a busy machine
    row = _row(case, interleaved_times([case.eager, case.fused, copier(case.bytes_moved)], reps=9))
    row["bench_median_ms"] = benchmark.stats.stats.median * 1e3
    try:
        import report_rows  # bench/report_rows.py (on sys.path through bench/conftest.py)
    except ImportError:
        report_rows = None
    benchmark.extra_info.update(row)
    if report_rows is not None:
        report_rows.add("Fused CPU kernels: C++ (lumina_rt._C) vs torch eager, same run", row)
    print(f"\n{op} {dtype} {case.shape}: eager {row['eager_ms']:.3f} ms, C++ {row['fused_ms']:.3f} ms, "
          f"{row['speedup']:.1f}x (ratio of minima {row['speedup_min']:.1f}x)")  # fmt: skip


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", ["rmsnorm_modulate", "gated_residual", "layernorm_modulate", "rope_qk"])
def test_norm_and_rope(benchmark, op, dtype):
    _bench(benchmark, op, dtype)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("combo", ["(1,2,2)", "(2,2,2)", "(2,4,4)"])
@pytest.mark.parametrize("op", ["patchify", "unpatchify"])
def test_patchify(benchmark, op, combo, dtype):
    _bench(benchmark, op, dtype, combo)


if __name__ == "__main__":
    import report_rows  # beside this script, so on sys.path when it runs as `python bench/bench_kernels_cpu.py`

    report_rows.steady_allocator()  # as under pytest bench/ (conftest.py)
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
    torch.set_num_threads(threads)
    cols = ("op", "dtype", "shape", "threads", "eager_ms", "fused_ms", "speedup", "speedup_min", "gbps", "pct_of_copy")
    print(" | ".join(cols))
    for r in kernel_rows():
        print(" | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
