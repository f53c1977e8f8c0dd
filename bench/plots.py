"""The bench report's plots (PNG files in bench/, embedded in bench/report.md by report_rows.write).

- `plot_roofline`: achieved GFLOP/s of one denoising step per patch size and backend (the rows of `test_step`),
  against the matmul rate the same run measured (report.json "ceilings"), one panel per precision.
- `plot_decisions`: per sampler step, what a cached run did (evaluated both guidance branches / the positive branch
  alone / evaluated without guidance / predicted), over t, per preset and cache level; `decisions(run)` turns a
  `CacheRun` into the list it plots (report.json key `decisions_70`).

matplotlib is optional (the `bench` extra): without it `report_plots` says so in one line and plots nothing. It is
drawn headless (the Agg canvas, no pyplot state).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lumina_rt.caching import CacheRun
from lumina_rt.sampling import SampleConfig, time_aware_value

STEP_SECTION = "One denoising step (batch 2 = CFG pair)"  # test_step's rows (bench/test_latency.py)
DECISIONS_KEY = "decisions_70"  # report.json: {"<preset> <level>": [[t, combo, decision, branches], ...]}
ROOFLINE_PNG = "step_roofline.png"
DECISIONS_PNG = "decisions_70.png"
EXTRA_HINT = "pip install 'lumina-rt[bench]' (or bash scripts/install.sh --dev)"

DPI = 100
ROOFLINE_SIZE_IN = (12.0, 5.0)
DECISIONS_WIDTH_IN = 12.0
BACKEND_COLOURS = {"torch eager": "#4c72b0", "torch+cpu-fused": "#dd8452", "ONNX Runtime": "#55a868"}
COMBO_COLOURS = {"2x4": "#8172b3", "2x2": "#c44e52", "1x2": "#2a9d8f"}
DTYPES = ("fp32", "bf16")


def matplotlib_missing() -> str | None:
    """Why the plots cannot be drawn here (matplotlib not importable), or None."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as e:
        return f"matplotlib is not installed ({e}); {EXTRA_HINT}"
    return None


def _figure(size_in: tuple[float, float]):
    """A matplotlib Figure on the Agg canvas (headless, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size_in, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def decisions(run: CacheRun, config: SampleConfig | None = None) -> list[list[Any]]:
    """One entry per sampler step of a cached run: [t, combo, "evaluate" | "reuse", branches], branches being the
    guidance decision on evaluated guided steps ("both" | "positive") and None otherwise. A policy without guidance
    reuse logs no guidance decisions: with `config` (the run's SampleConfig) its evaluated guided steps (cfg > 0 at
    t) say "both"; without it, None."""
    guidance = {(t, combo): branches for t, combo, branches in run.guidance_log}
    out: list[list[Any]] = []
    for _step, t, combo, decision in run.log:
        branches = None
        if decision == "evaluate":
            branches = guidance.get((t, combo))
            if branches is None and config is not None and float(time_aware_value(config.cfg, t, "cfg")) > 0:
                branches = "both"
        out.append([t, combo, decision, branches])
    return out


def plot_roofline(rows: Sequence[dict[str, Any]], ceilings: dict[str, float], path: Path, note: str = "") -> Path:
    """Bars: achieved GFLOP/s of one step per patch size (x) and backend (colour), labelled with the step time;
    dashed line: the run's measured matmul rate for that precision. One panel per precision present in `rows`.
    `note`: a line under the title (the run: date, machine)."""
    dtypes = [d for d in DTYPES if any(r["dtype"] == d for r in rows)]
    if not dtypes:
        raise ValueError("no step rows to plot")
    fig = _figure(ROOFLINE_SIZE_IN)
    axes = fig.subplots(1, len(dtypes), squeeze=False)[0]
    combos = sorted({r["combo"] for r in rows}, key=lambda c: -max(r["tokens"] for r in rows if r["combo"] == c))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    for ax, dtype in zip(axes, dtypes, strict=True):
        mine = [r for r in rows if r["dtype"] == dtype]
        present = [b for b in backends if any(r["backend"] == b for r in mine)]
        width = 0.8 / len(present)
        top = 0.0
        for i, backend in enumerate(present):
            for j, combo in enumerate(combos):
                row = next((r for r in mine if r["backend"] == backend and r["combo"] == combo), None)
                if row is None:
                    continue
                x = j - 0.4 + width * (i + 0.5)
                colour = BACKEND_COLOURS.get(backend, f"C{i}")
                ax.bar(x, row["gflops"], width * 0.92, color=colour, label=backend if j == 0 else None)
                ax.text(x, 0, f" {row['ms']:,.0f} ms", rotation=90, ha="center", va="bottom", fontsize=8, color="white")
                top = max(top, row["gflops"])
        ceiling = ceilings.get(f"matmul_{dtype}_gflops")
        if ceiling:
            ax.axhline(ceiling, color="black", linestyle="--", linewidth=1.2,
                       label=f"{dtype} matmul 2048³, this run: {ceiling:,.0f} GFLOP/s")  # fmt: skip
            top = max(top, ceiling)
        ax.set_ylim(0, top * 1.4)
        ax.set_xticks(range(len(combos)))
        tokens = {c: next(r["tokens"] for r in rows if r["combo"] == c) for c in combos}
        ax.set_xticklabels([f"{c}\n{tokens[c]:,} tokens" for c in combos])
        ax.set_xlabel("patch size (tokens per sample)")
        ax.set_ylabel("achieved GFLOP/s (model FLOPs / step time)")
        ax.set_title(f"{dtype} (bars labelled with the median step time)")
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    title = "One denoising step (batch 2 = CFG pair) per patch size and backend, against the measured matmul rate"
    fig.suptitle(f"{title}\n{note}" if note else title)
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    return path


def _shift(preset: str) -> float | None:
    try:
        return float(SampleConfig.from_name(preset).ts)
    except Exception:  # not a named preset: a linear t axis
        return None


def decisions_size_in(data: dict[str, list]) -> tuple[float, float]:
    """The decisions figure's size in inches: one panel per preset, one row per level, a legend below."""
    presets: dict[str, int] = {}
    for key in data:
        presets[key.split(" ", 1)[0]] = presets.get(key.split(" ", 1)[0], 0) + 1
    return DECISIONS_WIDTH_IN, 1.4 + sum(1.0 + 0.55 * n for n in presets.values())


MARKERS = {  # (label, marker, fill style, size)
    "both": ("evaluated, both guidance branches", "o", "full", 7),
    "positive": ("evaluated, positive branch only (guidance difference predicted)", "o", "left", 7),
    None: ("evaluated, no guidance at this t", "s", "full", 5.5),
    "reuse": ("predicted (velocity extrapolated, no model call)", "x", "none", 6),
}


def plot_decisions(data: dict[str, list], path: Path, note: str = "") -> Path:
    """Timelines of per-step decisions: one panel per preset, one row per cache level, x = t as the sampler runs
    (0 = noise → 1 = data), the axis warped by the preset's time shift so that grid steps are evenly spaced; marker:
    what the step did, colour: its patch size. `note`: a line under the title."""
    if not data:
        raise ValueError("no decisions to plot")
    panels: dict[str, list[tuple[str, list]]] = {}
    for key, steps in data.items():
        preset, _, level = key.partition(" ")
        panels.setdefault(preset, []).append((level or "(level?)", steps))
    fig = _figure(decisions_size_in(data))
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=[1.0 + 0.55 * len(v) for v in panels.values()])
    for ax, (preset, levels) in zip(axes[:, 0], panels.items(), strict=True):
        shift = _shift(preset)
        if shift is not None and shift != 1.0:
            s = shift

            def fwd(t, s=s):
                return s * t / (1 + (s - 1) * t)

            def inv(u, s=s):
                return u / (u + s - s * u)

            ax.set_xscale("function", functions=(fwd, inv))
            ticks = [0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 1]
            axis_note = f"axis warped by the time shift ts = {shift:g}: grid steps evenly spaced"
        else:
            ticks = [0, 0.2, 0.4, 0.6, 0.8, 1]
            axis_note = "linear axis"
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        # patch-size bands, from the first level's steps (the schedule is the preset's, the same for every level)
        first = levels[0][1]
        start = 0
        for k in range(1, len(first) + 1):
            if k == len(first) or first[k][1] != first[start][1]:
                combo = first[start][1]
                hi = first[k][0] if k < len(first) else 1.0
                ax.axvspan(first[start][0], hi, color=COMBO_COLOURS.get(combo, "grey"), alpha=0.10, linewidth=0)
                ax.text(_middle(ax, first[start][0], hi), 1.0, f"{combo} patches",
                        transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8,
                        color=COMBO_COLOURS.get(combo, "grey"))  # fmt: skip
                start = k
        labels = []
        for y, (level, steps) in enumerate(levels):
            evaluated = sum(1 for s in steps if s[2] == "evaluate")
            positive = sum(1 for s in steps if s[3] == "positive")
            labels.append(f"{level}\n{evaluated} of {len(steps)} evaluated, {positive} positive only")
            for kind, (_label, marker, fill, size) in MARKERS.items():
                for combo in dict.fromkeys(s[1] for s in steps):
                    ts = [s[0] for s in steps if s[1] == combo and (s[2] == kind if kind == "reuse" else
                                                                    s[2] == "evaluate" and s[3] == kind)]  # fmt: skip
                    if ts:
                        ax.plot(ts, [y] * len(ts), linestyle="none", marker=marker, fillstyle=fill,
                                markersize=size, color=COMBO_COLOURS.get(combo, "grey"),
                                markeredgecolor=COMBO_COLOURS.get(combo, "grey"))  # fmt: skip
        ax.set_yticks(range(len(levels)), labels, fontsize=8)
        ax.set_ylim(len(levels) - 0.5, -0.5)
        ax.set_xlim(*_margins(ax))
        ax.set_title(f"{preset}, {len(first)} sampler steps", pad=14)
        ax.set_xlabel(f"t as the sampler runs (0 = noise → 1 = data); {axis_note}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], linestyle="none", marker=m, fillstyle=f, markersize=s, color="dimgray", label=label)
               for label, m, f, s in MARKERS.values()]  # fmt: skip
    handles += [Patch(color=c, alpha=0.5, label=f"{combo} patches") for combo, c in COMBO_COLOURS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8)
    title = "Per-step decisions of the step cache and guidance reuse"
    fig.suptitle(f"{title}\n{note}" if note else title)
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    return path


def _margins(ax) -> tuple[float, float]:
    """t limits that leave 1 % of the axis free beyond t = 0 and t = 1 (the first and last markers whole)."""
    scale = ax.xaxis.get_transform()
    lo, hi = scale.transform([0.0, 1.0])
    pad = 0.012 * (hi - lo)
    return tuple(float(v) for v in scale.inverted().transform([lo - pad, hi + pad]))


def _middle(ax, a: float, b: float) -> float:
    """The t halfway between a and b on the axis' (possibly warped) scale."""
    scale = ax.xaxis.get_transform()
    return float(scale.inverted().transform([(scale.transform([a])[0] + scale.transform([b])[0]) / 2])[0])


def run_note(report: dict[str, Any]) -> str:
    """The run a report comes from, in one line (its "info": date, torch, threads, machine)."""
    info = report.get("info", {})
    return ", ".join(str(v) for v in (info.get("date"), info.get("machine"), info.get("threads") and
                     f"{info['threads']} threads", info.get("torch") and f"torch {info['torch']}") if v)  # fmt: skip


def report_plots(report: dict[str, Any], out: Path) -> dict[str, list[str]]:
    """Draw the plots the report has data for into `out`; markdown lines to embed, by where they go: the step section's
    title, DECISIONS_KEY, or "note" (matplotlib missing, a plot that failed). Never raises."""
    reason = matplotlib_missing()
    if reason is not None:
        return {"note": [f"Plots skipped: {reason}."]}
    lines: dict[str, list[str]] = {}
    rows = report.get("sections", {}).get(STEP_SECTION)
    if rows:
        try:
            plot_roofline(rows, report.get("ceilings", {}), Path(out) / ROOFLINE_PNG, note=run_note(report))
            lines[STEP_SECTION] = [
                f"![step GFLOP/s per patch size and backend against the matmul rate]({ROOFLINE_PNG})",
                "",
                "Achieved GFLOP/s of each step above (bars, labelled with the step time) against this run's measured "
                "matmul rate (dashed), per precision.",
            ]
        except Exception as e:  # a plot never fails the bench
            lines.setdefault("note", []).append(f"Plot {ROOFLINE_PNG} failed: {type(e).__name__}: {e}.")
    data = report.get(DECISIONS_KEY)
    if data:
        try:
            plot_decisions(data, Path(out) / DECISIONS_PNG, note=run_note(report))
            lines[DECISIONS_KEY] = [
                f"![per-step cache and guidance decisions over t]({DECISIONS_PNG})",
                "",
                "What each sampler step did at 70 grid points, per released preset and cache level: evaluated both "
                "guidance branches, the positive branch alone, evaluated without guidance, or predicted; colour: "
                "patch size; t runs 0 (noise) → 1 (data) as the sampler does.",
            ]
        except Exception as e:
            lines.setdefault("note", []).append(f"Plot {DECISIONS_PNG} failed: {type(e).__name__}: {e}.")
    return lines
