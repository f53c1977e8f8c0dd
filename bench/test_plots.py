"""The bench report's plots (bench/plots.py) from small made-up data: the PNGs exist, open, have the figure's size,
and report.md embeds them; without matplotlib (simulated: the import fails) report.md says why and names the extra."""

from __future__ import annotations

import json
import sys

import plots
import pytest
import report_rows
import torch
from PIL import Image

from lumina_rt.caching import StepCache
from lumina_rt.sampling import Conditioning, SampleConfig, sample_euler

needs_matplotlib = pytest.mark.skipif(plots.matplotlib_missing() is not None, reason="needs the 'bench' extra")

CEILINGS = {"matmul_fp32_gflops": 200.0, "matmul_bf16_gflops": 800.0, "copy_gbps": 60.0}


def step_rows() -> list[dict]:
    rows = []
    for backend, dtypes in (("torch eager", ("fp32", "bf16")), ("torch+cpu-fused", ("fp32", "bf16")),
                            ("ONNX Runtime", ("fp32",))):  # fmt: skip
        for dtype in dtypes:
            for combo, tokens, ms in (("1x2", 4096, 2000.0), ("2x2", 2048, 700.0), ("2x4", 512, 120.0)):
                ms = ms / (2 if dtype == "bf16" else 1)
                rows.append(dict(combo=combo, backend=backend, dtype=dtype, batch=2, tokens=tokens, ms=ms,
                                 gflops=tokens * 80 / ms, pct_of_matmul=50.0))  # fmt: skip
    return rows


def cached_run(preset: str, level: str | StepCache, steps: int = 30):
    """A cached sampling run on a free velocity field (smooth in t, different per branch): its CacheRun and config."""
    config = SampleConfig.from_name(preset).replace(step=steps)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 2, 8, 8, generator=g)
    pos = Conditioning(torch.randn(1, 5, 8, generator=g), torch.ones(1, 5, dtype=torch.long))
    neg = Conditioning(torch.randn(1, 5, 8, generator=g), torch.ones(1, 5, dtype=torch.long))

    def velocity(x, t, cap_feats, cap_mask, motion, combo):
        return -x * (1 + t.view(-1, *[1] * (x.dim() - 1))) + cap_feats.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)

    run = StepCache.from_setting(level).start()
    sample_euler(velocity, z, pos, neg, config, progress=False, cache=run)
    return run, config


@pytest.fixture
def fresh_report(monkeypatch):
    for name in ("ROWS", "SUMMARY", "SKIPPED"):
        monkeypatch.setattr(report_rows, name, {})
    monkeypatch.setattr(report_rows, "CEILINGS", dict(CEILINGS))


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_decisions_turn_a_cache_run_into_one_entry_per_step():
    # at most 3 steps predicted in a row, so that guided steps are evaluated after the warm-up and some run the
    # positive branch alone (with safe+cfg's span limit this field's guided steps are all predicted or warm-up)
    run, config = cached_run("f24F96R960-MultiScale", StepCache(0.6, max_skips=3, guidance=0.5))
    data = plots.decisions(run, config)
    assert len(data) == config.step - 1 == len(run.log)
    assert [d[0] for d in data] == [t for _, t, _, _ in run.log]
    assert {d[1] for d in data} == {"2x4", "2x2", "1x2"}
    assert [d[2] for d in data] == [decision for *_, decision in run.log]
    guided = [d for d in data if d[2] == "evaluate" and d[0] < 0.2]
    assert guided and all(d[3] in ("both", "positive") for d in guided)
    assert sum(d[3] == "positive" for d in data) == run.guidance_reused > 0
    assert all(d[3] is None for d in data if d[2] == "reuse" or d[0] >= 0.2)
    json.dumps(data)  # goes into report.json as it is
    # a policy without guidance reuse logs no branch decisions: the config says which evaluated steps were guided
    run, config = cached_run("f24F96R960", "safe")
    assert not run.guidance_log
    data = plots.decisions(run, config)
    assert {d[3] for d in data if d[2] == "evaluate" and d[0] < 0.2} == {"both"}
    assert all(d[3] is None for d in plots.decisions(run))


@needs_matplotlib
def test_plots_are_pngs_of_the_figure_size(tmp_path):
    path = plots.plot_roofline(step_rows(), CEILINGS, tmp_path / "roof.png")
    width, height = plots.ROOFLINE_SIZE_IN
    assert png_size(path) == (width * plots.DPI, height * plots.DPI)
    data = {f"{preset} {level}": plots.decisions(*cached_run(preset, level))
            for preset in ("f24F96R960", "f24F96R960-MultiScale") for level in ("safe", "safe+cfg")}  # fmt: skip
    path = plots.plot_decisions(data, tmp_path / "decisions.png")
    width, height = plots.decisions_size_in(data)
    assert png_size(path) == (round(width * plots.DPI), round(height * plots.DPI))
    # a made-up preset name: a linear t axis, one row
    path = plots.plot_decisions({"my-schedule off": [[0.0, "1x2", "evaluate", None], [0.5, "1x2", "reuse", None]]},
                                tmp_path / "one.png")  # fmt: skip
    assert png_size(path)[0] == plots.DECISIONS_WIDTH_IN * plots.DPI


@needs_matplotlib
def test_report_md_embeds_the_plots(tmp_path, fresh_report):
    for row in step_rows():
        report_rows.add(plots.STEP_SECTION, row)
    run, config = cached_run("f24F96R960-MultiScale", "safe+cfg")
    report_rows.SUMMARY[plots.DECISIONS_KEY] = {"f24F96R960-MultiScale safe+cfg": plots.decisions(run, config)}
    report_rows.write(tmp_path)
    md = (tmp_path / "report.md").read_text()
    for png in (plots.ROOFLINE_PNG, plots.DECISIONS_PNG):
        assert f"]({png})" in md and png_size(tmp_path / png)[0] > 0
    # the step plot right below the step table, the decisions in their own section
    table_end = md.index(f"## {plots.STEP_SECTION}")
    assert md.index(plots.ROOFLINE_PNG) > table_end and "## Per-step decisions at 70 grid points" in md
    report = json.loads((tmp_path / "report.json").read_text())
    assert report[plots.DECISIONS_KEY]["f24F96R960-MultiScale safe+cfg"][0][1] == "2x4"
    # report.md again from report.json (python bench/report_rows.py): the same text
    assert report_rows.markdown(report, tmp_path) == md


def test_without_matplotlib_the_report_says_which_extra_brings_the_plots(tmp_path, fresh_report, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    for row in step_rows():
        report_rows.add(plots.STEP_SECTION, row)
    report_rows.write(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Plots skipped: matplotlib is not installed" in md and "pip install 'lumina-rt[bench]'" in md
    assert not list(tmp_path.glob("*.png")) and "![" not in md
    assert "| 1x2 | torch eager | fp32 |" in md  # the tables are all there


@needs_matplotlib
def test_a_failing_plot_is_a_line_in_the_report_not_an_error(tmp_path, fresh_report):
    report_rows.add(plots.STEP_SECTION, {"combo": "1x2", "ms": 1.0})  # no dtype, tokens, gflops: the plot fails
    report_rows.SUMMARY[plots.DECISIONS_KEY] = {"f24F96R960 safe": [[0.0, "1x2"]]}
    report_rows.write(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert f"Plot {plots.ROOFLINE_PNG} failed: KeyError" in md and f"Plot {plots.DECISIONS_PNG} failed:" in md
    assert "| 1x2 | 1 |" in md
