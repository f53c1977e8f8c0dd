"""Export and build: per-scale ONNX graphs, shared weights, the ONNX Runtime check, and cached stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from lumina_rt.checkpoint import load_config, save_native
from lumina_rt.config import ModelConfig
from lumina_rt.engines import onnxruntime_engine, tensorrt_engine
from lumina_rt.engines.profiles import ServeShapes
from lumina_rt.errors import ConfigError, EngineError
from lumina_rt.export.build_engines import build
from lumina_rt.export.onnx_export import TENSORRT_OPS, check_graph
from lumina_rt.model import MultiScaleNextDiT
from lumina_rt.runtime import Runtime
from lumina_rt.tolerances import rel_err
from tests._engine_fixtures import engines

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(
    dim=64, n_layers=1, n_heads=2, multiple_of=32, in_channels=3, cap_feat_dim=16, all_patch_size=[2],
    all_f_patch_size=[1], qk_norm=True, rope_theta=256.0, t_scale=1000.0, motion_scale=20.0,
)  # fmt: skip
SMALL_SHAPES = ServeShapes(resolutions=((16, 16),), frames=(1, 4), max_batch=1, max_caption=32)


def small_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = MultiScaleNextDiT(ModelConfig.from_kwargs(SMALL))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return save_native(path, model.config, model.state_dict())


@pytest.fixture(scope="module")
def public():
    return engines("public")


def _mtimes(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(d.iterdir())}


# ------------------------------------------------------------------------------------------------ the public build


def test_build_exports_every_scale_sharing_one_weight_file(public):
    ckpt, eng, report = public
    assert report.target == "onnx" and report.changed
    m = json.loads((eng / "manifest.json").read_text())
    assert sorted(m["scales"]) == ["1x2", "2x2", "2x4"]
    assert m["precision"] == "fp32" and m["runtime"]["name"] == "onnxruntime" and m["gpu"] is None
    assert m["model"]["weights_hash"] and m["default_sample_preset"] == "f24F96R960-MultiScale"
    param_bytes = (ckpt / "model.safetensors").stat().st_size
    # the backbone is stored once: the shared file is about one model's weights, not three
    assert m["weights"]["bytes"] < 1.1 * param_bytes
    names = {}
    for combo, scale in m["scales"].items():
        assert scale["check"]["passed"] and scale["check"]["max_rel_err"] < 2e-6, scale["check"]
        proto = onnx.load(str(eng / scale["onnx"]["path"]), load_external_data=False)
        external = {i.name for i in proto.graph.initializer if i.data_location == TensorProto.EXTERNAL}
        inline = [i for i in proto.graph.initializer if i.data_location != TensorProto.EXTERNAL]
        assert all(len(i.raw_data) < 1024 for i in inline)
        assert all(
            e.value == "weights.bin" for i in proto.graph.initializer for e in i.external_data if e.key == "location"
        )
        names[combo] = external
    shared = set.intersection(*names.values())
    assert "layers.0.attention.wq.weight.T" in shared and "layers.1.feed_forward.w2.weight.T" in shared
    assert "all_x_embedder.2-1.weight.T" in names["1x2"] and "all_x_embedder.2-1.weight.T" not in names["2x4"]


def test_graphs_are_dynamic_float32_with_fused_attention_for_onnxruntime(public):
    _, eng, _ = public
    proto = onnx.load(str(eng / "velocity_2x4.onnx"), load_external_data=False)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims == {
        "tokens": ["batch", "tokens", 128],
        "cos": ["tokens", 16],
        "sin": ["tokens", 16],
        "t": ["batch"],
        "cap_feats": ["batch", "caption", 48],
        "cap_mask": ["batch", "caption"],
        "motion": ["batch"],
    }
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [1, 1, 1, 1, 1, 7, 1]
    # by path: the ONNX checker reads the external weights next to the file; raises on float64 / complex / operators
    info = check_graph(eng / "velocity_2x4.onnx", "2x4")
    assert info["opset"] == 20 and info["unsupported_by_tensorrt"] == ["MultiHeadAttention"]
    n_mha = sum(n.op_type == "MultiHeadAttention" and n.domain == "com.microsoft" for n in proto.graph.node)
    assert n_mha == 2 * load_config(public[0]).n_layers  # self- and cross-attention of every layer
    assert "Softmax" not in info["ops"]
    with pytest.raises(EngineError, match=r"TensorRT's ONNX parser does not take: \['MultiHeadAttention'\]"):
        check_graph(eng / "velocity_2x4.onnx", "2x4", for_tensorrt=True)


def test_graphs_for_tensorrt_keep_matmul_softmax_attention(tmp_path, public):
    """The decomposed form (TensorRT builds): only operators TensorRT's parser takes, same velocity as ORT's form."""
    import onnxruntime

    from lumina_rt.checkpoint import load_model
    from lumina_rt.export.build_engines import attention_form
    from lumina_rt.export.onnx_export import CHECK_CASES, export_scale, random_inputs

    assert attention_form("tensorrt") == "decomposed" and attention_form("onnx") == "ort-mha"
    model = load_model(public[0])
    outs = {}
    for form in ("decomposed", "ort-mha"):
        proto, folder = export_scale(model, "2x4", tmp_path / form, attention=form)
        onnx.save(proto, str(folder / "g.onnx"))
        if form == "decomposed":
            info = check_graph(folder / "g.onnx", "2x4", for_tensorrt=True)
            assert set(info["ops"]) <= TENSORRT_OPS and {"MatMul", "Softmax"} <= set(info["ops"])
        feeds = {k: v.numpy() for k, v in random_inputs(model.config, "2x4", CHECK_CASES[1]).items()}
        session = onnxruntime.InferenceSession(str(folder / "g.onnx"), providers=["CPUExecutionProvider"])
        outs[form] = session.run(None, feeds)[0]
    assert rel_err(outs["ort-mha"], outs["decomposed"]) < 1e-6


def test_check_graph_refuses_float64_and_foreign_operators():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2])
    g = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE)], "g", [x], [y])
    with pytest.raises(EngineError, match="float64"):
        check_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), "1x2")
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("Celu", ["x"], ["z"])], "g", [x], [z])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    assert check_graph(model, "1x2")["unsupported_by_tensorrt"] == ["Celu"]
    with pytest.raises(EngineError, match=r"TensorRT's ONNX parser does not take: \['Celu'\]"):
        check_graph(model, "1x2", for_tensorrt=True)


def test_rebuild_with_nothing_changed_does_nothing(public):
    ckpt, eng, _ = public
    before = _mtimes(eng)
    res = subprocess.run(
        [sys.executable, "export/build_engines.py", "--checkpoint", str(ckpt), "--out", str(eng), "--target",
         "onnx", "--no-measure"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "nothing to do" in res.stdout and "cached  export" in res.stdout and "cached  check" in res.stdout
    assert _mtimes(eng) == before
    from lumina_rt.cli import main

    assert main(["build", "--checkpoint", str(ckpt), "--out", str(eng), "--target", "onnx", "--no-measure"]) == 0
    assert _mtimes(eng) == before


# ------------------------------------------------------------------------------------------------ cached stages


def test_each_change_rebuilds_its_part(tmp_path, monkeypatch):
    ckpt, eng = small_checkpoint(tmp_path / "ckpt"), tmp_path / "eng"
    first = build(ckpt, eng, target="onnx", shapes=SMALL_SHAPES, measure=False)
    assert [d.split(":")[0] for d in first.done] == ["export", "check"]
    graph_mtime = (eng / "velocity_1x2.onnx").stat().st_mtime_ns

    # served shapes: ONNX graphs take any shape, only the manifest's profiles change
    wider = ServeShapes(resolutions=((16, 16), (32, 32)), frames=(1, 4), max_batch=1, max_caption=32)
    r = build(ckpt, eng, target="onnx", shapes=wider, measure=False)
    assert [d.split(":")[0] for d in r.done] == ["manifest"] and len(r.cached) == 2
    assert json.loads((eng / "manifest.json").read_text())["scales"]["1x2"]["profile"]["tokens"][-1][-1] == 4 * 16 * 16

    # another ONNX Runtime version: the graphs stay, the check runs again
    monkeypatch.setattr(onnxruntime_engine, "version", lambda: "9.9.9-test")
    r = build(ckpt, eng, target="onnx", shapes=wider, measure=False)
    assert [d.split(":")[0] for d in r.done] == ["check"] and r.cached == [
        "export: found cached ONNX graphs and weights.bin"
    ]
    assert (eng / "velocity_1x2.onnx").stat().st_mtime_ns == graph_mtime
    assert json.loads((eng / "manifest.json").read_text())["runtime"]["version"] == "9.9.9-test"
    monkeypatch.undo()

    # other weights: everything is exported and checked again
    small_checkpoint(ckpt, seed=1)
    r = build(ckpt, eng, target="onnx", shapes=wider, measure=False)
    assert [d.split(":")[0] for d in r.done] == ["export", "check"]
    with pytest.raises(ConfigError, match="precision 'fp16' needs TensorRT"):
        build(ckpt, eng, target="onnx", precision="fp16", shapes=wider, measure=False)


def test_tensorrt_stage_cache_keys_without_tensorrt(tmp_path, monkeypatch):
    """The engine stage's caching with a stand-in for the TensorRT builder (TensorRT itself is absent here)."""
    calls = []

    def fake_build_plan(onnx_path, plan_path, profiles, precision="fp32", timing_cache_path=None, workspace=None):
        calls.append((Path(plan_path).name, precision, len(profiles)))
        Path(plan_path).write_bytes(json.dumps([precision, profiles]).encode())
        Path(timing_cache_path).write_bytes(b"timing")
        return {"tensorrt": "10.13.0", "precision": precision, "profiles": len(profiles), "stripped": True}

    import lumina_rt.export.tensorrt_build as tb

    monkeypatch.setattr(tensorrt_engine, "unavailable_reason", lambda: None)
    monkeypatch.setattr(tensorrt_engine, "version", lambda: "10.13.0")
    monkeypatch.setattr(tensorrt_engine, "gpu_info", lambda: {"name": "stand-in", "arch": "sm_90"})
    monkeypatch.setattr(tb, "build_plan", fake_build_plan)
    ckpt, eng = small_checkpoint(tmp_path / "ckpt"), tmp_path / "eng"
    r = build(ckpt, eng, target="auto", shapes=SMALL_SHAPES, measure=False)
    assert r.target == "tensorrt" and calls == [("velocity_1x2.plan", "fp32", 2)]
    m = json.loads((eng / "manifest.json").read_text())
    assert m["runtime"] == {"name": "tensorrt", "version": "10.13.0"} and m["gpu"]["arch"] == "sm_90"
    assert m["scales"]["1x2"]["engine"]["path"] == "velocity_1x2.plan" and m["timing_cache"] == {"path": "timing.cache"}

    assert not build(ckpt, eng, target="tensorrt", shapes=SMALL_SHAPES, measure=False).changed and len(calls) == 1
    r = build(ckpt, eng, target="tensorrt", precision="fp16", shapes=SMALL_SHAPES, measure=False)
    assert [d.split(":")[0] for d in r.done] == ["engine"] and calls[-1] == ("velocity_1x2.plan", "fp16", 2)
    wider = ServeShapes(resolutions=((16, 16), (32, 32)), frames=(1, 4), max_batch=1, max_caption=32)
    build(ckpt, eng, target="tensorrt", precision="fp16", shapes=wider, measure=False)
    assert calls[-1] == ("velocity_1x2.plan", "fp16", 3) and len(calls) == 3  # 64, 256, 1024 tokens
    monkeypatch.setattr(tensorrt_engine, "gpu_info", lambda: {"name": "stand-in", "arch": "sm_89"})
    build(ckpt, eng, target="tensorrt", precision="fp16", shapes=wider, measure=False)
    assert len(calls) == 4

    # At run time the plans need the real TensorRT: the runtime says why and falls back to another backend
    # (no ranking was measured: the fixed order, whose first CPU entry is ONNX Runtime).
    monkeypatch.undo()
    rt = Runtime(eng)
    if not torch.cuda.is_available():
        assert rt.engines.backend_name == "onnxruntime"
    if tensorrt_engine.unavailable_reason() is not None:
        assert "TensorRT" in rt.engines.backend_reasons["tensorrt"]


def test_tensorrt_engines_run():
    reason = tensorrt_engine.unavailable_reason()
    if reason is not None:
        pytest.skip(f"TensorRT is not installed or has no GPU here ({reason}); its plans cannot be built or run")
    _, eng, _ = engines("public")  # pragma: no cover - needs TensorRT and a GPU
    out = eng.parent / "engines_public_trt"
    shapes = ServeShapes(resolutions=((16, 16), (32, 32), (8, 16), (16, 8)), frames=(1, 2, 4, 8), max_batch=1)
    build(engines("public")[0], out, target="tensorrt", shapes=shapes, measure=False)
    from lumina_rt.parity import load_fixture, run_parity
    from tests._engine_fixtures import fixture_path

    rt = Runtime(out, backend="tensorrt")
    results = run_parity(load_fixture(fixture_path("public")), rt.parity_target(), tolerance=1e-4)
    assert all(r.passed for r in results)


def test_script_runs_the_installed_module(tmp_path):
    """`python export/build_engines.py --help` works from any directory, through the installed lumina_rt.export."""
    res = subprocess.run(
        [sys.executable, str(REPO / "export" / "build_engines.py"), "--help"], cwd=tmp_path, capture_output=True,
        text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "--resolutions" in res.stdout and "--target {auto,tensorrt,onnx,torch}" in res.stdout
