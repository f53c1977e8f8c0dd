"""The bench's row helper on a base install: rows that need the `onnx` extra skip, naming it, and report.json lists
them. The missing extra is simulated (the availability check patched), not uninstalled."""

from __future__ import annotations

import json

import pytest
import report_rows
import test_latency

MISSING = "onnx, onnxruntime are not installed (pip install 'lumina-rt[onnx]')"


@pytest.fixture
def fresh_report(monkeypatch):
    for name in ("ROWS", "SUMMARY", "SKIPPED"):
        monkeypatch.setattr(report_rows, name, {})


def test_rows_without_the_onnx_extra_skip_naming_it_and_the_report_lists_them(monkeypatch, tmp_path, fresh_report):
    monkeypatch.setattr(report_rows, "onnx_missing", lambda: MISSING)
    with pytest.raises(pytest.skip.Exception, match=r"ort_over_torch: needs the 'onnx' extra: onnx, onnxruntime"):
        test_latency.test_ort_over_torch_summary()
    with pytest.raises(pytest.skip.Exception, match=r"step 2x4 onnxruntime fp32: needs the 'onnx' extra"):
        test_latency.test_step(None, "2x4", "onnxruntime", "fp32")
    for test in (test_latency.test_ort_attention_forms, test_latency.test_end_to_end_step_cache):
        with pytest.raises(pytest.skip.Exception, match="needs the 'onnx' extra"):
            test()
    with pytest.raises(pytest.skip.Exception, match="multiscale_over_single: needs the 'onnx' extra"):
        test_latency.test_end_to_end_multiscale_vs_single("onnxruntime")
    report_rows.add("a row that ran", {"ms": 1.0})
    report_rows.write(tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    expected = {"ort_over_torch", "step 2x4 onnxruntime fp32", "ort_mha_over_decomposed", "cache_over_uncached",
                "multiscale_over_single"}  # fmt: skip
    assert set(report["skipped_rows"]) == expected
    assert all(why == f"needs the 'onnx' extra: {MISSING}" for why in report["skipped_rows"].values())
    assert report["sections"] == {"a row that ran": [{"ms": 1.0}]}
    md = (tmp_path / "report.md").read_text()
    assert "## Skipped rows" in md and "| `ort_over_torch` | needs the 'onnx' extra" in md


def test_with_the_onnx_extra_nothing_is_skipped(monkeypatch, fresh_report):
    monkeypatch.setattr(report_rows, "onnx_missing", lambda: None)
    report_rows.needs_onnx("ort_over_torch")  # returns: the row runs
    assert report_rows.SKIPPED == {}


def test_end_to_end_rows_count_the_model_flops_spent():
    """The end-to-end rows' FLOPs: every model call at its rows (2 on guided steps), here with a free velocity."""
    from lumina_rt.flops import forward_flops, token_count
    from lumina_rt.sampling import SampleConfig, time_grid

    cfg = test_latency.bench_model().config
    calls: list[int] = []

    def velocity(x, t, cap_feats, cap_mask, motion, combo):
        calls.append(x.shape[0])
        return -x

    _, combos, flops = test_latency._sample_ms("f24F96R960", velocity)
    sc = SampleConfig.from_name("f24F96R960").replace(step=test_latency.E2E_STEPS)
    guided = sum(1 for t in time_grid(sc.step, sc.ts).tolist()[:-1] if t < 0.2)
    one = forward_flops(cfg, "1x2", token_count(cfg, "1x2", *test_latency.LATENT[1:]), test_latency.CAP_LEN)
    assert len(combos) == sc.step - 1 and 0 < guided < sc.step - 1
    assert flops == (len(combos) + guided) * one
