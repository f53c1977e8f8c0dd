"""The serving structure: one pipeline for engines and reference, engine backends by measured ranking, torch-only
engine directories, requests checked in the user's terms, and the import rules the structure promises."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lumina_rt import ops
from lumina_rt.builtin import builtin_dir
from lumina_rt.builtin.reference import generate_reference
from lumina_rt.engines import BACKENDS, UNMEASURED_ORDER
from lumina_rt.engines.engine_set import EngineSet
from lumina_rt.engines.measure import CPU_TOKENS, MARGIN, measure_shape, rank, ranking_lines
from lumina_rt.engines.profiles import ServeShapes
from lumina_rt.engines.torch_engine import cpu_has_native_bf16
from lumina_rt.errors import BackendUnavailableError, EngineError, InputError
from lumina_rt.export.build_engines import build
from lumina_rt.parity import load_fixture, rel_err, run_parity
from lumina_rt.runtime import Runtime
from tests._engine_fixtures import engines, fixture_path
from tests._paths import REPO

BUILTIN_SHAPES = ServeShapes(resolutions=((32, 32),), frames=(8,), max_batch=2, max_caption=64)


@pytest.fixture(scope="module")
def builtin_torch_engines(tmp_path_factory):
    """The built-in model's engines as a torch-only engine directory (target torch: no ONNX needed)."""
    out = tmp_path_factory.mktemp("builtin") / "engines"
    report = build(builtin_dir(), out, target="torch", shapes=BUILTIN_SHAPES, measure=False)
    return out, report


# ------------------------------------------------------------------------------------------------ one pipeline


@pytest.mark.parametrize("sample", ["single_scale", "multi_scale"])
def test_runtime_generate_equals_reference_generation(builtin_torch_engines, sample):
    """Engines (torch backend, reference kernels) and the reference model give the same video for the same seed."""
    eng, _ = builtin_torch_engines
    prompts = ["a red circle moving right quickly", "a green square moving up slowly"]
    rt = Runtime(eng, backend="torch")
    res = rt.generate(prompts, frames=8, height=32, width=32, preset=sample, steps=6, seed=3, progress=False)
    ref = generate_reference(prompts, frames=8, height=32, width=32, sample=sample, steps=6, seed=3)
    assert res.frames is not None and res.frames.shape == ref.shape == (2, 3, 8, 32, 32)
    assert torch.equal(res.frames, ref)


def test_per_prompt_motion_goes_through_the_pipeline(builtin_torch_engines):
    eng, _ = builtin_torch_engines
    rt = Runtime(eng, backend="torch")
    kw = dict(preset="single_scale", steps=4, progress=False)
    z = rt.pipeline.noise(2, 8, 32, 32, seed=0)
    both = rt.generate(["a red circle moving right"] * 2, item_motion=[0.5, 2.5], noise=z, **kw)
    slow = rt.generate(["a red circle moving right"], motion=0.5, noise=z[:1], **kw)
    fast = rt.generate(["a red circle moving right"], motion=2.5, noise=z[1:], **kw)
    # the batch rows differ only through their motion scores, and each equals the run with that scalar score (to
    # batch-size rounding; the two scores give clearly different videos)
    torch.testing.assert_close(both.latents[0], slow.latents[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(both.latents[1], fast.latents[0], rtol=1e-4, atol=1e-4)
    assert rel_err(slow.latents, fast.latents) > 1e-2
    with pytest.raises(InputError, match=r"3 motion scores \(item_motion\) for 2 prompts"):
        rt.generate(["a", "b"], item_motion=[1.0, 1.0, 1.0], noise=z, **kw)


def test_requests_outside_the_engines_are_reported_in_the_users_terms(builtin_torch_engines):
    eng, _ = builtin_torch_engines
    rt = Runtime(eng, backend="torch")
    with pytest.raises(EngineError, match=r"^frames=8, height=32, width=1000: 2000 tokens at scale 2x2, outside every "
                       r"built profile .*up to 64 tokens\); served frames x height x width: 8x32x32"):  # fmt: skip
        rt.generate("a red circle", frames=8, height=32, width=1000, preset="multi_scale", progress=False)
    many = r"^prompt: 3 prompts; these engines take at most 2 with guidance \(rebuild with a larger --max-batch\)"
    with pytest.raises(EngineError, match=many):
        rt.generate(["a", "b", "c"], frames=8, height=32, width=32, progress=False)


# ------------------------------------------------------------------------------------------------ targets and backends


def test_torch_target_needs_no_onnx_and_serves_every_torch_backend(builtin_torch_engines):
    eng, report = builtin_torch_engines
    assert report.target == "torch" and [d.split(":")[0] for d in report.done] == ["export", "components"]
    m = json.loads((eng / "manifest.json").read_text())
    assert m["target"] == "torch" and m["export"]["opset"] is None and not list(eng.glob("*.onnx"))
    assert all(s["onnx"] is None and s["check"] is None for s in m["scales"].values())
    es = EngineSet(eng)
    assert "no ONNX graphs" in es.backend_reasons["onnxruntime"]
    assert set(es.backends.values()) <= {"torch", "torch-cpu-fused", "torch-triton"}
    with pytest.raises(BackendUnavailableError, match="'onnxruntime' cannot run: the engine directory has no ONNX"):
        EngineSet(eng, backend="onnxruntime")


@pytest.mark.parametrize("backend", ["torch", "torch-cpu-fused", "onnxruntime"])
def test_every_cpu_engine_backend_passes_parity(backend):
    if backend == "torch-cpu-fused" and "cpu-fused" not in ops.available_backends():
        pytest.fail("the C++ extension lumina_rt._C is not built: the torch-cpu-fused backend cannot be checked")
    _, eng, _ = engines("public")
    es = EngineSet(eng, backend=backend)
    assert es.backend_name == backend
    results = run_parity(load_fixture(fixture_path("public")), es)
    assert max(r.rel_err for r in results) <= 1e-5


def test_cpu_fused_engines_run_the_fused_qk_norm_rope(monkeypatch):
    """`rope_qk_layernorm` is dispatched: the torch-cpu-fused engine calls the C++ op for QK-norm + RoPE."""
    from lumina_rt.kernels import cpu

    calls = []
    original = cpu.CPU_IMPLS["rope_qk_layernorm"]
    monkeypatch.setitem(cpu.CPU_IMPLS, "rope_qk_layernorm", lambda *a: calls.append(1) or original(*a))
    _, eng, _ = engines("public")
    es = EngineSet(eng, backend="torch-cpu-fused", scales=["2x4"])
    fx = load_fixture(fixture_path("public"))
    x = fx.get("in.x")
    with torch.no_grad():
        es.velocity(x, fx.get("in.t"), fx.get("in.cap_feats"), fx.get("in.cap_mask"), fx.get("in.motion"), "2x4")
    assert len(calls) == fx.config.n_layers


def test_bf16_torch_engines(tmp_path):
    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 arithmetic (AVX512-BF16 / AMX): bf16 torch engines are refused here")
    ckpt, fp32_eng, _ = engines("public")
    eng = tmp_path / "bf16"
    shapes = ServeShapes(resolutions=((16, 16), (32, 32)), frames=(1, 8), max_batch=2)
    build(ckpt, eng, target="torch", precision="bf16", shapes=shapes, measure=False)
    fx = load_fixture(fixture_path("public"))
    args = [fx.get(f"in.{k}") for k in ("x", "t", "cap_feats", "cap_mask", "motion")]
    ref = EngineSet(fp32_eng, backend="torch").velocity(*args, "1x2")
    for backend in ("torch", "torch-cpu-fused"):
        es = EngineSet(eng, backend=backend)
        assert es.precision == "bf16" and next(es.engine("1x2").model.parameters()).dtype == torch.bfloat16
        out = es.velocity(*args, "1x2")
        assert out.dtype == torch.float32 and rel_err(out, ref) <= 2e-2


# ------------------------------------------------------------------------------------------------ measured ranking


def test_measured_shape_is_capped_without_a_gpu():
    """CPU builds time a scale on the largest served shape within CPU_TOKENS (else the smallest); GPUs the largest."""
    served = [{"tokens": 96 * 240 * 240}, {"tokens": 1024}, {"tokens": CPU_TOKENS}, {"tokens": 60}]
    assert measure_shape(served, gpu=False)["tokens"] == CPU_TOKENS
    assert measure_shape(served, gpu=True)["tokens"] == 96 * 240 * 240
    assert measure_shape([{"tokens": 10**6}, {"tokens": 5 * 10**5}], gpu=False)["tokens"] == 5 * 10**5


def test_rank_prefers_the_reference_within_the_margin():
    assert [r["backend"] for r in rank({"torch": 100.0, "onnxruntime": 99.0})] == ["torch", "onnxruntime"]
    faster = 100.0 * (1 - MARGIN) - 1
    assert [r["backend"] for r in rank({"torch": 100.0, "onnxruntime": faster})] == ["onnxruntime", "torch"]
    assert [r["backend"] for r in rank({"torch-cpu-fused": 50.0, "onnxruntime": 40.0})][0] == "onnxruntime"


def test_build_measures_the_backends_and_auto_follows_the_ranking(tmp_path):
    ckpt, _, _ = engines("public")
    eng = tmp_path / "eng"
    shapes = ServeShapes(resolutions=((16, 16),), frames=(8,), max_batch=2)
    report = build(ckpt, eng, target="onnx", shapes=shapes, measure_steps=2)
    assert [d.split(":")[0] for d in report.done] == ["export", "check", "measure"]
    ranking = json.loads((eng / "manifest.json").read_text())["ranking"]
    expected = {"torch", "onnxruntime"} | ({"torch-cpu-fused"} if "cpu-fused" in ops.available_backends() else set())
    for combo in ("1x2", "2x2", "2x4"):
        rows = ranking["scales"][combo]
        assert {r["backend"] for r in rows} >= expected and all(r["ms"] > 0 for r in rows)
        assert [r["backend"] for r in rows] == [r["backend"] for r in rank({r["backend"]: r["ms"] for r in rows})]
    assert ranking["host"]["threads"] == torch.get_num_threads() and ranking["steps"] == 2
    es = EngineSet(eng)
    assert es.backends == {c: ranking["scales"][c][0]["backend"] for c in es.patch_combos}
    # nothing changed: the ranking is cached, and a --no-measure rebuild keeps it
    again = build(ckpt, eng, target="onnx", shapes=shapes, measure_steps=2)
    assert not again.changed and "measure: found a ranking measured on this machine" in again.cached
    assert not build(ckpt, eng, target="onnx", shapes=shapes, measure=False, measure_steps=2).changed
    assert any("backend ranking" in line for line in ranking_lines(ranking))
    assert "not measured" in ranking_lines(None)[0]


def test_auto_takes_each_scales_fastest_backend(tmp_path):
    """A manifest ranking that differs per scale gives a mixed engine set whose velocities are still right."""
    _, eng, _ = engines("public")
    manifest = json.loads((eng / "manifest.json").read_text())
    order = {"1x2": ["torch", "onnxruntime"], "2x2": ["onnxruntime", "torch"], "2x4": ["tensorrt", "torch"]}
    manifest["ranking"] = {"scales": {c: [{"backend": b, "ms": 1.0} for b in bs] for c, bs in order.items()}}
    es = EngineSet(eng, manifest=manifest)
    assert es.backends == {"1x2": "torch", "2x2": "onnxruntime", "2x4": "torch"}  # TensorRT cannot run here
    assert es.backend_name == "1x2: torch, 2x2: onnxruntime, 2x4: torch"
    results = run_parity(load_fixture(fixture_path("public")), es)
    assert max(r.rel_err for r in results) <= 1e-5


def test_build_command_prints_the_ranking(tmp_path):
    ckpt, _, _ = engines("public")
    res = subprocess.run(
        [sys.executable, "-m", "lumina_rt", "build", "--checkpoint", str(ckpt), "--out", str(tmp_path / "e"),
         "--target", "torch", "--resolutions", "16x16", "--frames", "8", "--measure-steps", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert re.search(r"backend ranking \(one step per scale, median of 1; .*threads", res.stdout)
    assert re.search(r"  1x2: 1\. torch(-cpu-fused)? [0-9.]+ ms  2\. torch", res.stdout)


def test_backend_table_lists_every_backend_once():
    assert list(BACKENDS) == list(UNMEASURED_ORDER)
    for name, backend in BACKENDS.items():
        impl = backend.impl()
        assert callable(impl.unavailable_reason) and callable(impl.load), name


# ------------------------------------------------------------------------------------------------ import rules


def test_the_runtime_imports_nothing_from_export():
    code = "import sys, lumina_rt.runtime; print([m for m in sys.modules if m.startswith('lumina_rt.export')])"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def _sources() -> list[Path]:
    return [p for d in ("lumina_rt", "kernels", "export", "bench", "tools") for p in (REPO / d).rglob("*.py")]


def test_no_sys_path_patching_and_no_private_cross_imports():
    patching = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\[|sys\.modules\[[^]]+\]\s*=")
    imports = re.compile(r"^\s*(from\s+[\w.]+\s+import\s+\(?[^#\n]*\b_[a-z]\w*|import\s+[\w.]*\b_[a-z]\w*)")
    modules = "ops|mf|ox|cpu|registry|components|sampling|checkpoint|manifest|profiles|engine_set|torch_engine"
    private = re.compile(rf"{imports.pattern}|\b({modules})\._[a-z]\w*")
    for path in _sources():
        text = path.read_text()
        # thirdparty.py registers the installed `kernels` distribution (importlib's documented import-from-spec
        # recipe) so that the checkout's kernels/ folder cannot shadow it; it never touches sys.path.
        if path.relative_to(REPO).as_posix() != "lumina_rt/thirdparty.py":
            assert not patching.search(text), f"{path}: patches sys.path / sys.modules"
        for line in text.splitlines():
            if private.search(line) and "import main as _main" not in line:
                pytest.fail(f"{path.relative_to(REPO)}: imports or calls another module's private name: {line.strip()}")
