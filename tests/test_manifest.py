"""Everything around the engines that needs no engine: profiles, manifest validation, cache keys, weight store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lumina_rt.components import LatentSpec
from lumina_rt.config import ModelConfig
from lumina_rt.engines import manifest as mf
from lumina_rt.engines import tensorrt_engine
from lumina_rt.engines.profiles import (
    Range,
    ScaleProfile,
    ServeShapes,
    compute_profiles,
    parse_frames,
    parse_resolutions,
    scale_tokens,
)
from lumina_rt.engines.weights import WeightStore, WeightStoreWriter
from lumina_rt.errors import BackendUnavailableError, ConfigError, EngineError, InputError

TINY = ModelConfig.from_name("tiny")
COGVIDEOX = LatentSpec(channels=4, temporal_factor=4, spatial_factor=8, scale=1.15258426)


# ------------------------------------------------------------------------------------------------ profiles


def test_token_counts_follow_from_resolutions_and_frames():
    shapes = ServeShapes(resolutions=((480, 832), (960, 960)), frames=(1, 96), max_batch=1, max_caption=256)
    profiles = compute_profiles(TINY, COGVIDEOX, shapes)
    assert sorted(profiles) == ["1x2", "2x2", "2x4"]
    # 96 frames -> 24 latent frames; 960 px -> 120 latent; image: 1 latent frame repeated to the frame patch.
    assert scale_tokens((24, 120, 120), 1, 2) == 24 * 60 * 60
    p12 = profiles["1x2"]
    served = sorted(s["tokens"] for s in p12.served)
    assert served == [30 * 52, 60 * 60, 24 * 30 * 52, 24 * 60 * 60]  # 480x832 -> 60x104 latent -> 30x52 tokens
    # one range per served token count, contiguous from 1, opt = max = the served count
    assert [r.as_list() for r in p12.tokens] == [
        [1, 1560, 1560],
        [1561, 3600, 3600],
        [3601, 37440, 37440],
        [37441, 86400, 86400],
    ]
    assert p12.batch == Range(1, 2, 2) and p12.caption == Range(1, 256, 256)
    assert profiles["2x4"].max_tokens == 12 * 30 * 30
    # a range's index is the TensorRT optimization profile the request uses
    assert p12.select(2, 1560, 100) == 0 and p12.select(1, 1561, 1) == 1 and p12.select(2, 86400, 256) == 3


def test_request_outside_every_profile_names_the_dimension():
    p = compute_profiles(TINY, LatentSpec(4), ServeShapes(resolutions=((16, 16),), frames=(8,), max_batch=1))["1x2"]
    with pytest.raises(EngineError, match=r"513 tokens is outside every built profile of scale 1x2.*1\.\.512"):
        p.select(1, 513, 4)
    with pytest.raises(EngineError, match="batch 3 is outside"):
        p.select(3, 10, 4)
    with pytest.raises(EngineError, match="caption length 300"):
        p.select(1, 10, 300)


def test_unsupported_resolutions_and_bad_shape_text():
    with pytest.raises(InputError, match="latent width 10 is not a multiple of the spatial patch 4"):
        scale_tokens((4, 8, 10), 2, 4)
    with pytest.raises(InputError, match="latent frames 3"):
        scale_tokens((3, 8, 8), 2, 2)
    with pytest.raises(ConfigError, match="scale 2x4 cannot take any served shape"):
        compute_profiles(TINY, LatentSpec(4), ServeShapes(resolutions=((6, 6),), frames=(1,)))
    assert parse_resolutions("960x960, 480X832") == ((960, 960), (480, 832))
    assert parse_frames("1,96") == (1, 96)
    with pytest.raises(ConfigError, match="HEIGHTxWIDTH"):
        parse_resolutions("960*960")
    with pytest.raises(ConfigError, match="integers"):
        parse_frames("a,b")


def test_profile_round_trip_and_tensorrt_input_shapes():
    p = compute_profiles(TINY, LatentSpec(4), ServeShapes(resolutions=((16, 16),), frames=(1, 8), max_batch=2))["2x2"]
    back = ScaleProfile.from_dict("2x2", json.loads(json.dumps(p.to_dict())))
    assert back == p
    shapes = p.input_shapes(1, token_features=32, head_dim=32, cap_dim=48)
    assert shapes["tokens"] == [[1, 65, 32], [2, 256, 32], [4, 256, 32]]
    assert shapes["cos"] == [[65, 16], [256, 16], [256, 16]]
    assert shapes["cap_mask"] == [[1, 1], [2, 256], [4, 256]]
    with pytest.raises(EngineError, match="malformed"):
        ScaleProfile.from_dict("2x2", {"batch": [1, 2]})


# ------------------------------------------------------------------------------------------------ cache keys


def test_engine_cache_key_holds_everything_that_changes_a_plan():
    p = {"batch": [1, 2, 4], "caption": [1, 256, 256], "tokens": [[1, 64, 64]], "served": [{"tokens": 64}]}
    base = dict(
        onnx_sha256="a", weights_sha256="w", profile=p, precision="fp32", tensorrt_version="10.13", gpu_arch="sm_90"
    )
    key = mf.engine_key(**base, build_format=1)
    assert key == mf.engine_key(**base, build_format=1)
    changes = [
        dict(onnx_sha256="b"),
        dict(weights_sha256="v"),
        dict(profile={**p, "tokens": [[1, 64, 128]]}),
        dict(profile={**p, "batch": [1, 2, 8]}),
        dict(precision="fp16"),
        dict(tensorrt_version="10.14"),
        dict(gpu_arch="sm_89"),
    ]
    for change in changes:
        assert mf.engine_key(**{**base, **change}, build_format=1) != key, change
    # the served-shape notes do not change the plan
    assert mf.engine_key(**{**base, "profile": {**p, "served": []}}, build_format=1) == key
    assert mf.engine_key(**base, build_format=2) != key


def test_export_and_check_keys():
    cfg = TINY.to_kwargs()
    k = mf.export_key(cfg, "h1", ["1x2"], {"opset": 20}, {"torch": "2.13"})
    assert k != mf.export_key(cfg, "h2", ["1x2"], {"opset": 20}, {"torch": "2.13"})
    assert k != mf.export_key({**cfg, "norm_eps": 1e-6}, "h1", ["1x2"], {"opset": 20}, {"torch": "2.13"})
    assert k != mf.export_key(cfg, "h1", ["1x2"], {"opset": 20}, {"torch": "2.14"})
    assert mf.check_key(k, "1.32.0", "cases", 1e-5) != mf.check_key(k, "1.33.0", "cases", 1e-5)


# ------------------------------------------------------------------------------------------------ manifest


def _manifest(**changes):
    m = mf.new_manifest()
    m.update(model={}, target="onnx", precision="fp32", runtime={}, weights={}, scales={"1x2": {}}, shapes={})
    m.update(changes)
    return m


def test_manifest_validation_names_the_problem(tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        mf.read_manifest(tmp_path / "none")
    with pytest.raises(EngineError, match="no manifest.json"):
        mf.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(EngineError, match="corrupt"):
        mf.read_manifest(tmp_path)
    for bad, pattern in [
        (_manifest(format_version=99), "format version 99"),
        (_manifest(lumina_rt_version="9.9.0"), "built by lumina_rt 9.9.0"),
        (_manifest(format="other"), "not a lumina_rt engine manifest"),
        ({k: v for k, v in _manifest().items() if k != "weights"}, r"lacks the fields \['weights'\]"),
        (_manifest(scales={}), "no per-scale engines"),
    ]:
        mf.write_manifest(tmp_path, bad)
        with pytest.raises(EngineError, match=pattern):
            mf.read_manifest(tmp_path)
    mf.write_manifest(tmp_path, _manifest())
    assert mf.read_manifest(tmp_path)["target"] == "onnx"


def test_file_entries_detect_missing_truncated_and_altered_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"0123456789")
    entry = mf.file_entry(tmp_path, "a.bin")
    assert mf.verify_file(tmp_path, entry, "engine") == tmp_path / "a.bin"
    (tmp_path / "a.bin").write_bytes(b"0123456780")
    with pytest.raises(EngineError, match="engine file .*a.bin.* is corrupt: its SHA-256"):
        mf.verify_file(tmp_path, entry, "engine")
    mf.verify_file(tmp_path, entry, "engine", full=False)  # size-only check passes
    (tmp_path / "a.bin").write_bytes(b"012")
    with pytest.raises(EngineError, match="3 bytes, the manifest says 10"):
        mf.verify_file(tmp_path, entry, "engine", full=False)
    (tmp_path / "a.bin").unlink()
    with pytest.raises(EngineError, match="is missing"):
        mf.verify_file(tmp_path, entry, "engine")


# ------------------------------------------------------------------------------------------------ weight store


def test_weight_store_deduplicates_bytes_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    writer = WeightStoreWriter()
    writer.add("w.T", np.ascontiguousarray(w.T))
    writer.add("b", b)
    writer.add("b@1x8", b.reshape(1, 8))  # same bytes, other shape: stored once
    writer.add("w.T", np.ascontiguousarray(w.T))  # same name, same contents: fine
    writer.params["w"] = {"tensor": "w.T", "transpose": True, "shape": [16, 8]}
    assert writer.nbytes == 64 * ((w.nbytes + 63) // 64) + b.nbytes
    with pytest.raises(EngineError, match="registered twice"):
        writer.add("b", b + 1)
    writer.write(tmp_path / "weights.bin")
    store = WeightStore(tmp_path / "weights.bin", writer.index(), writer.nbytes)
    np.testing.assert_array_equal(store.array("b@1x8"), b.reshape(1, 8))
    np.testing.assert_array_equal(store.param("w"), w)
    assert store.array("b").ctypes.data == store.array("b@1x8").ctypes.data  # one copy in memory
    assert all(e["offset"] % 64 == 0 for e in writer.tensors.values())
    with pytest.raises(EngineError, match=f"has {writer.nbytes} bytes, the manifest says 1000"):
        WeightStore(tmp_path / "weights.bin", writer.index(), 1000)
    with pytest.raises(EngineError, match="no tensor 'nope'"):
        store.array("nope")


# ------------------------------------------------------------------------------------------------ TensorRT


def test_tensorrt_absence_is_a_typed_error():
    reason = tensorrt_engine.unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present: nothing to report as absent")
    with pytest.raises(BackendUnavailableError, match="TensorRT"):
        from lumina_rt.export.tensorrt_build import build_plan

        build_plan("x.onnx", "x.plan", [{"tokens": [[1, 1, 16], [1, 1, 16], [1, 1, 16]]}])
    from lumina_rt.export.build_engines import resolve_target

    with pytest.raises(BackendUnavailableError, match="cannot build TensorRT engines"):
        resolve_target("tensorrt")
    assert resolve_target("auto") == "onnx"


# ------------------------------------------------------------------------------------------------ measuring host


@pytest.fixture
def torch_engines(tmp_path):
    """A tiny model's torch engines (random weights, one served shape), built with the ranking measured."""
    import torch

    from lumina_rt.checkpoint import save_native
    from lumina_rt.export.build_engines import build
    from lumina_rt.model import MultiScaleNextDiT

    torch.manual_seed(0)
    ckpt = save_native(tmp_path / "ckpt", TINY, MultiScaleNextDiT(TINY).state_dict())
    shapes = ServeShapes(resolutions=((16, 16),), frames=(8,), max_batch=1, max_caption=8)
    out = tmp_path / "engines"
    report = build(ckpt, out, target="torch", shapes=shapes, measure_steps=1)
    assert report.ranking is not None and report.ranking["host"] == mf.host()
    return ckpt, out, shapes


def test_host_record_and_comparison():
    here = mf.host()
    assert set(here) == {"cpu", "threads", "gpu", "torch"} and mf.same_host(dict(here), here)
    assert not mf.same_host({**here, "cpu": "Other CPU 9000"}, here) and not mf.same_host(None, here)
    assert mf.same_host({**here, "torch": "0.0", "threads": 99}, here)  # the machine decides, not the process
    assert mf.host_label({"cpu": "X", "threads": 4, "gpu": "G"}) == "X, 4 threads, G"


def test_ranking_from_another_host_warns_once_and_measure_only_re_measures_in_place(torch_engines, caplog, monkeypatch):
    from lumina_rt.cli import main
    from lumina_rt.engines import engine_set
    from lumina_rt.engines.engine_set import EngineSet
    from lumina_rt.export.build_engines import build

    ckpt, out, shapes = torch_engines
    monkeypatch.setattr(engine_set, "_WARNED_HOSTS", set())
    manifest = mf.read_manifest(out)
    other = {**manifest["ranking"]["host"], "cpu": "Other CPU 9000", "threads": 64}  # another machine
    manifest["ranking"]["host"] = other
    mf.write_manifest(out, manifest)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "measured on" in r.message]

    caplog.set_level("WARNING", logger="lumina_rt.engines.engine_set")
    EngineSet(out)
    EngineSet(out)  # one line per engine directory and process
    assert len(warnings()) == 1
    line = warnings()[0]
    assert "Other CPU 9000, 64 threads" in line and mf.host_label(mf.host()) in line
    assert f"lumina-rt build --measure-only {out}" in line
    caplog.clear()
    EngineSet(out, backend="torch")  # a named backend does not follow the ranking: nothing to warn about
    assert warnings() == []

    before = {k: v for k, v in mf.read_manifest(out).items() if k != "ranking"}
    assert main(["build", "--measure-only", str(out), "--measure-steps", "1"]) == 0
    after = mf.read_manifest(out)
    assert after["ranking"]["host"] == mf.host() and {k: v for k, v in after.items() if k != "ranking"} == before
    assert set(after["ranking"]["scales"]) == set(after["scales"])
    monkeypatch.setattr(engine_set, "_WARNED_HOSTS", set())
    EngineSet(out)
    assert warnings() == []
    # the ranking it wrote is the build's own: a rebuild on this host finds it current
    report = build(ckpt, out, target="torch", shapes=shapes, measure_steps=1)
    assert "measure: found a ranking measured on this machine" in report.cached and not report.done


def test_measure_only_flags(tmp_path, capsys):
    from lumina_rt.cli import main

    assert main(["build", "--measure-only", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert (
        "--measure-only ENGINE_DIR re-measures existing engines: give no --checkpoint / --out"
        in capsys.readouterr().err
    )
    assert main(["build", "--checkpoint", str(tmp_path)]) == 2
    assert "lumina-rt build needs --out (or --measure-only ENGINE_DIR)" in capsys.readouterr().err
    assert main(["build", "--measure-only", str(tmp_path / "none")]) != 0


def test_engine_call_path_computes_shape_dependent_inputs_once_per_shape(torch_engines):
    import torch

    from lumina_rt.engines.engine_set import EngineSet
    from lumina_rt.model import latent_rope_tables

    _, out, _ = torch_engines
    es = EngineSet(out, backend="torch")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, TINY.in_channels, 2, 4, 4, generator=g)
    t, motion = torch.rand(1, generator=g), torch.ones(1)
    cap, mask = torch.randn(1, 3, TINY.cap_feat_dim, generator=g), torch.ones(1, 3, dtype=torch.int64)
    first = {c: es.velocity(x, t, cap, mask, motion, c) for c in es.patch_combos}
    assert es.shape_cache == {"hits": 0, "misses": len(es.patch_combos)}
    for _ in range(2):
        for c in es.patch_combos:
            assert torch.equal(es.velocity(x, t, cap, mask, motion, c), first[c])  # same result from the cached tables
    assert es.shape_cache == {"hits": 2 * len(es.patch_combos), "misses": len(es.patch_combos)}
    _, cos, sin, _ = es.tokens(x, t, cap, mask, motion, "1x2")
    ref_cos, ref_sin = latent_rope_tables(TINY, 2, 4, 4, 1, 2)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    es.velocity(torch.randn(1, TINY.in_channels, 1, 4, 4), t, cap, mask, motion, "1x2")  # a new shape: a miss
    assert es.shape_cache["misses"] == len(es.patch_combos) + 1
    with pytest.raises(InputError, match="unsupported resolution 2x3x4"):
        es.velocity(torch.randn(1, TINY.in_channels, 2, 3, 4), t, cap, mask, motion, "1x2")
