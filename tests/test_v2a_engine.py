"""The V2A model through the engine machinery: ONNX export (one scale; batch, frames, caption dynamic), the build's
v2a stage, and the engine backends against the reference model (tolerances from lumina_rt.tolerances)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lumina_rt.errors import BackendUnavailableError, EngineError
from lumina_rt.tolerances import TOLERANCES, rel_err
from tests._v2a_checkpoint import tiny_v2a_dir

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the onnx extra): no V2A ONNX engine")


@pytest.fixture(scope="module")
def v2a_dir():
    return tiny_v2a_dir()


def test_v2a_graph_equals_the_reference_at_every_batch_length_and_caption(v2a_dir, tmp_path):
    from lumina_rt.engines.v2a_engine import INPUT_NAMES, V2AEngine, ort_session
    from lumina_rt.export.v2a_export import EXPORT_EXAMPLE, check_onnx, export_v2a, random_inputs
    from lumina_rt.v2a.pipeline import V2APipeline

    model = V2APipeline.from_dir(v2a_dir).model
    info = export_v2a(model, tmp_path / "velocity.onnx")
    assert info["opset"] == 20 and info["nodes"] > 50
    check = check_onnx(tmp_path / "velocity.onnx", model, (8, 16), TOLERANCES["fp32"])
    assert check["passed"] and check["max_rel_err"] <= TOLERANCES["fp32"]
    assert {(c["batch"], c["frames"], c["caption"]) for c in check["cases"]}.isdisjoint({EXPORT_EXAMPLE})

    engine = V2AEngine(model.config, "onnxruntime", session=ort_session(tmp_path / "velocity.onnx"))
    for batch, frames, caption in ((2, 10, 9), (1, 16, 1), (4, 8, 6)):
        inputs = random_inputs(model.config, batch, frames, caption, seed=frames)
        args = [inputs[n] for n in INPUT_NAMES[:6]]
        with torch.no_grad():
            ref = model.velocity(*args)
        out = engine.velocity(*args)
        assert ref.norm() > 0.1 * ref.numel() ** 0.5  # far from zero: a graph computing nothing would fail
        assert rel_err(out, ref) <= TOLERANCES["fp32"], (batch, frames, caption, rel_err(out, ref))


@pytest.fixture(scope="module")
def engine_dir(v2a_dir, tmp_path_factory):
    """The shared public-fixture engines (built once per session) copied, then built again with the V2A model: only
    the v2a stage runs."""
    from lumina_rt.export.build_engines import build
    from tests._engine_fixtures import engines

    ckpt, built, _ = engines("public")
    out = tmp_path_factory.mktemp("eng") / "engines"
    shutil.copytree(built, out)
    report = build(ckpt, out, target="onnx", measure=False, v2a=v2a_dir)
    assert [d.split(":")[0] for d in report.done] == ["v2a"], report.done
    return ckpt, out


def test_build_adds_the_v2a_engine_and_caches_it(engine_dir, v2a_dir):
    from lumina_rt.export.build_engines import build

    ckpt, out = engine_dir
    entry = json.loads((out / "manifest.json").read_text())["v2a"]
    assert entry["onnx"]["path"] == "v2a/velocity.onnx" and entry["frames"] == [8, 16]
    assert entry["sample_rate"] == 16000 and entry["fps"] == 8 and entry["opset"] == 20
    assert entry["check"]["passed"] and entry["check"]["max_rel_err"] <= TOLERANCES["fp32"]
    assert {f["path"] for f in entry["files"]} >= {"v2a/config.json", "v2a/model.safetensors"}
    # the weights are stored once: the graph's initializers read the copied checkpoint file, the graph holds none
    import onnx

    graph = onnx.load(str(out / "v2a" / "velocity.onnx"), load_external_data=False).graph
    external = [i for i in graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) > 10
    assert {e.value for i in external for e in i.external_data if e.key == "location"} == {"model.safetensors"}
    assert sum(len(i.raw_data) for i in graph.initializer) < 0.01 * (out / "v2a" / "model.safetensors").stat().st_size
    again = build(ckpt, out, target="onnx", measure=False, v2a=v2a_dir)
    assert not again.changed and "v2a: found cached V2A engine" in again.cached


def test_runtime_sound_on_onnxruntime_equals_the_torch_engine(engine_dir):
    from lumina_rt.runtime import Runtime

    _, out = engine_dir
    clip = torch.rand(3, 12, 24, 24, generator=torch.Generator().manual_seed(0))
    latents, waves = {}, {}
    for backend in ("onnxruntime", "torch"):
        stage = Runtime(out, backend=backend).pipeline.audio_stage()
        assert stage.v2a.model.backend == backend
        prepared = stage.v2a.prepare_frames(clip)[None]
        latents[backend] = stage.v2a.generate_latents(prepared, ["a red circle"], seed=2, progress=False)
        waves[backend] = stage(clip, 8, "a red circle", seed=2, progress=False)
    # the sampled trajectory within the sampled-trajectory tolerance; the vocoder (Griffin-Lim) then amplifies
    # float32 rounding, so the waveforms are compared by correlation
    assert latents["torch"].abs().max() > 0.5
    assert rel_err(latents["onnxruntime"], latents["torch"]) <= TOLERANCES["fp32-sampled"]
    assert waves["torch"].shape == (24000,) and waves["torch"].abs().max() > 0.05
    assert torch.corrcoef(torch.stack([waves["onnxruntime"], waves["torch"]]))[0, 1] > 0.999


def test_a_corrupt_or_missing_v2a_engine_is_an_engine_error(engine_dir, tmp_path):
    from lumina_rt.engines.manifest import read_manifest
    from lumina_rt.engines.v2a_engine import load_v2a

    _, built = engine_dir
    out = tmp_path / "engines"
    shutil.copytree(built, out)
    graph = out / "v2a" / "velocity.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="V2A ONNX graph file .*velocity.onnx' is corrupt"):
        load_v2a(out, read_manifest(out), "onnxruntime")
    manifest = read_manifest(out)
    manifest.pop("v2a")
    with pytest.raises(EngineError, match="have no V2A engine; rebuild with `lumina-rt build ... --v2a"):
        load_v2a(out, manifest)


def test_torch_target_copies_the_checkpoint_without_a_graph(engine_dir, v2a_dir, tmp_path):
    from lumina_rt.engines.manifest import read_manifest
    from lumina_rt.engines.v2a_engine import choose_backend, load_v2a
    from lumina_rt.export.build_engines import build

    ckpt, _ = engine_dir
    out = tmp_path / "engines"
    build(ckpt, out, target="torch", measure=False, v2a=v2a_dir)
    manifest = read_manifest(out)
    assert manifest["v2a"]["onnx"] is None and not (out / "v2a" / "velocity.onnx").exists()
    assert load_v2a(out, manifest).model.backend == "torch"
    assert choose_backend(manifest["v2a"], "tensorrt") == "torch"  # a video-only backend: auto for the sound
    with pytest.raises(BackendUnavailableError, match="no V2A ONNX graph"):
        choose_backend(manifest["v2a"], "onnxruntime")
    r = build(ckpt, out, target="torch", measure=False)  # built without --v2a: the sound model goes
    assert "v2a: no V2A model any more" in r.done and not (out / "v2a").exists()
    assert "v2a" not in read_manifest(out) or read_manifest(out)["v2a"] is None
