"""Collects benchmark rows during `pytest bench/` and writes bench/report.md and bench/report.json at the end."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import plots  # bench/plots.py (bench/ is on sys.path, as for this module)
import torch

HERE = Path(__file__).resolve().parent
ROWS: dict[str, list[dict[str, Any]]] = {}
SUMMARY: dict[str, Any] = {}
CEILINGS: dict[str, float] = {}
SKIPPED: dict[str, str] = {}  # row (the bench test's id) -> the missing extra, as the skip said it


def onnx_missing() -> str | None:
    """Why ONNX Runtime rows cannot run here (the build's own check), or None."""
    from lumina_rt.export.build_engines import onnx_unavailable_reason

    return onnx_unavailable_reason()


def needs_onnx(row: str) -> None:
    """Skip the bench row `row` (recorded in report.json's "skipped_rows") when the `onnx` extra is missing."""
    reason = onnx_missing()
    if reason is not None:
        SKIPPED[row] = f"needs the 'onnx' extra: {reason}"
        import pytest

        pytest.skip(f"{row}: {SKIPPED[row]}")


def steady_allocator() -> bool:
    """Keep freed large blocks in the process, as a caching allocator (jemalloc / tcmalloc, which PyTorch CPU
    serving usually preloads) would: glibc otherwise maps and unmaps multi-MB tensors at its own changing
    thresholds, and a call whose temporaries are freshly mapped pays a page fault per 4 KiB (measured here: the
    same eager RMSNorm took 2.8 ms or 12 ms, the same fused op 0.4 ms or 4.4 ms, from one run to the next).
    Affects eager and fused code alike. Returns False where glibc's mallopt is not available."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        # blocks up to 32 MiB (glibc's largest mmap threshold on 64-bit) come from the heap, which is never trimmed
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False


def median_ms(fn, reps: int = 5, warmup: int = 1, max_s: float = 30.0) -> float:
    """Median wall time of fn() in ms (stops early once max_s is spent, keeping at least 3 runs)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if i >= 2 and time.perf_counter() - start > max_s:
            break
    times.sort()
    return times[len(times) // 2]


def cpu_name() -> str:
    """The CPU's model name (and whether it has AVX512-BF16), from /proc/cpuinfo where there is one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    extra = "AVX512-BF16" if "avx512_bf16" in flags else ("AVX-512" if "avx512f" in flags else "no AVX-512")
    return f"{name or platform.machine()} ({extra})"


def measure_ceilings() -> dict[str, float]:
    """The machine's matmul rate (fp32, bf16) and copy bandwidth, timed here."""
    if CEILINGS:
        return CEILINGS
    n = 2048
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        ms = median_ms(lambda a=a, b=b: a @ b, reps=7, warmup=2)
        CEILINGS[f"matmul_{name}_gflops"] = 2 * n**3 / (ms * 1e-3) / 1e9
    x = torch.randn(64 * 1024 * 1024 // 4)  # 64 MiB
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), reps=9, warmup=2)
    CEILINGS["copy_gbps"] = 2 * x.numel() * 4 / (ms * 1e-3) / 1e9  # read + write
    return CEILINGS


def add(section: str, row: dict[str, Any]) -> None:
    ROWS.setdefault(section, []).append(row)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def write(out: Path = HERE) -> bool:
    """bench/report.json, bench/report.md and its plots (into `out`) from the rows, ratios and skipped rows of this
    session; False (nothing written) when there are none."""
    if not ROWS and not SUMMARY and not SKIPPED:
        return False
    info = {
        "machine": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    report = {"info": info, "ceilings": CEILINGS, **SUMMARY, "sections": ROWS, "skipped_rows": SKIPPED}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report, out))
    return True


def markdown(report: dict[str, Any], out: Path = HERE) -> str:
    """report.md's text for a report (report.json's content); draws its plots into `out` (bench/plots.py: skipped,
    saying why, where matplotlib is missing; a failing plot is a line in the report, never an error)."""
    info, ceilings, sections = report["info"], report.get("ceilings", {}), report.get("sections", {})
    skipped = report.get("skipped_rows", {})
    summary = {k: v for k, v in report.items() if k not in ("info", "ceilings", "sections", "skipped_rows")}
    try:
        plotted = plots.report_plots(report, out)
    except Exception as e:  # report_plots catches its own failures; this is the last guard
        plotted = {"note": [f"Plots failed: {type(e).__name__}: {e}."]}
    lines = ["# lumina_rt CPU benchmark report", ""]
    lines.append(f"{info['date']}, torch {info['torch']}, {info['threads']} threads, {info['machine']}.")
    lines.append("")
    if ceilings:
        text = ", ".join(f"{k} {_fmt(v)}" for k, v in ceilings.items())
        lines.append(f"Machine ceilings measured by this run: {text}")
        lines.append("")
    if plotted.get("note"):
        lines += [*plotted["note"], ""]
    if summary:
        lines += ["## Ratios (measured in this run)", "", "| ratio | value | measured on |", "|---|---|---|"]
        for k, v in summary.items():
            if isinstance(v, dict) and "value" in v:
                lines.append(f"| `{k}` | {_fmt(v['value'])} | {v.get('sizes', '')} |")
        lines.append("")
    if plotted.get(plots.DECISIONS_KEY):
        lines += ["## Per-step decisions at 70 grid points (released presets)", "", *plotted[plots.DECISIONS_KEY], ""]
    for section, rows in sections.items():
        cols = list(dict.fromkeys(k for r in rows for k in r))
        lines += [f"## {section}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
        lines.append("")
        if plotted.get(section):
            lines += [*plotted[section], ""]
    if skipped:
        lines += ["## Skipped rows", "", "| row | why |", "|---|---|"]
        lines += [f"| `{row}` | {why} |" for row, why in skipped.items()]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # python bench/report_rows.py [REPORT_JSON]: report.md and the plots again, from report.json
    import sys

    src = Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "report.json").resolve()
    (src.parent / "report.md").write_text(markdown(json.loads(src.read_text()), src.parent))
    print(f"wrote {src.parent / 'report.md'}")
