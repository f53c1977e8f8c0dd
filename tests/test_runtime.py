"""The engine runtime: parity through engines, generate() against the reference sampler, typed errors, videos."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lumina_rt import components
from lumina_rt.checkpoint import save_native
from lumina_rt.config import ModelConfig
from lumina_rt.engines import tensorrt_engine
from lumina_rt.engines.profiles import ServeShapes
from lumina_rt.errors import BackendUnavailableError, EngineError, InputError, ScheduleError, TextEncoderError
from lumina_rt.export.build_engines import build
from lumina_rt.model import MultiScaleNextDiT
from lumina_rt.parity import load_fixture, run_parity
from lumina_rt.pipeline import make_noise
from lumina_rt.runtime import Runtime
from lumina_rt.sampling import Conditioning, sample_euler
from lumina_rt.tolerances import rel_err
from tests._engine_fixtures import engines, fixture_path
from tests._fixture_gen import EXTRA_CONFIGS

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "lumina_rt"]


@pytest.fixture(scope="module")
def public():
    ckpt, eng, _ = engines("public")
    fx = load_fixture(fixture_path("public"))
    model = MultiScaleNextDiT(fx.config).eval()
    model.load_state_dict(fx.state_dict, strict=True)
    return fx, model, eng, Runtime(eng, backend="onnxruntime")


# ------------------------------------------------------------------------------------------------ parity


def test_parity_command_with_engine_dir(public):
    _, _, eng, _ = public
    res = subprocess.run(
        [*CLI, "parity", str(fixture_path("public")), "--engine-dir", str(eng),
         "--json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "LUMINA_RT_ENGINE_BACKEND": "onnxruntime"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["passed"] and report["backend"] == "engines:onnxruntime" and len(report["cases"]) == 16
    assert report["max_rel_err"] <= 1e-5
    assert {c["kind"] for c in report["cases"]} == {"forward", "forward_list", "forward_with_multi_cfg", "sample_euler"}


@pytest.mark.parametrize("name", sorted(EXTRA_CONFIGS))
def test_parity_on_generated_fixtures(name):
    """Other sizes, no GQA / no QK-norm / eps 1e-6 / FFN multiplier 1.3, and 3 heads on one KV head."""
    _, eng, _ = engines(name)
    fx = load_fixture(fixture_path(name))
    rt = Runtime(eng)
    rt.engines.check_config(fx.config)
    results = run_parity(fx, rt.parity_target())
    assert {r.kind for r in results} == {"forward", "forward_list", "forward_with_multi_cfg", "sample_euler"}
    worst = max(results, key=lambda r: r.rel_err)
    assert worst.rel_err <= 1e-5, worst


@pytest.mark.parametrize("name", ["public", *sorted(EXTRA_CONFIGS)])
def test_cpu_fused_engines_pass_every_fixture(name):
    """The torch + C++ ops engine (attention kernel included: GQA 2:1 / 3:1 / none, head dims 16-64) within 1e-5."""
    from lumina_rt import _C

    if not _C.attention_supported(0):
        pytest.skip(f"this CPU has no AVX-512 (ISA {_C.isa()}): the attention kernel cannot run here")
    _, eng, _ = engines(name)
    fx = load_fixture(fixture_path(name))
    rt = Runtime(eng, backend="torch-cpu-fused")
    worst = max(run_parity(fx, rt.parity_target()), key=lambda r: r.rel_err)
    assert worst.rel_err <= 1e-5, worst


def test_torch_backend_from_the_same_weight_file(public):
    fx, _, eng, _ = public
    rt = Runtime(eng, backend="torch")
    assert rt.engines.backend_name == "torch"
    results = run_parity(fx, rt.parity_target())
    assert max(r.rel_err for r in results) <= 1e-5


def test_backend_selection_and_overrides(public, monkeypatch):
    _, _, eng, rt = public
    assert rt.engines.backend_name == "onnxruntime"
    auto = Runtime(eng)  # these engines hold no measured ranking: auto takes the fixed order
    if tensorrt_engine.unavailable_reason() is not None:
        assert "no TensorRT plans" in auto.engines.backend_reasons["tensorrt"]
    if not torch.cuda.is_available():
        assert auto.engines.backend_name == "onnxruntime"
        assert "onnxruntime-cuda" in auto.engines.backend_reasons and "torch-triton" in auto.engines.backend_reasons
        with pytest.raises(BackendUnavailableError, match="'torch-triton' cannot run: no CUDA GPU"):
            Runtime(eng, backend="torch-triton")
    with pytest.raises(BackendUnavailableError, match="'tensorrt' cannot run"):
        Runtime(eng, backend="tensorrt")
    with pytest.raises(BackendUnavailableError, match="unknown engine backend 'fast'"):
        Runtime(eng, backend="fast")
    monkeypatch.setenv("LUMINA_RT_ENGINE_BACKEND", "torch")
    assert Runtime(eng, scales=["2x4"]).engines.backend_name == "torch"


def test_scales_share_one_copy_of_the_weights(public):
    _, _, eng, rt = public
    sessions = [rt.engines.engine(c) for c in rt.engines.patch_combos]
    shared = {id(e.shared) for e in sessions}
    assert len(shared) == 1
    values = sessions[0].shared._values
    per_graph = sum(len(e.external) for e in sessions)
    assert len(values) == len(set().union(*(e.external for e in sessions))) < per_graph
    lazy = Runtime(eng, scales=["1x2"])
    assert lazy.engines.loaded_scales == ["1x2"]
    lazy.engines.engine("2x4")
    assert lazy.engines.loaded_scales == ["1x2", "2x4"]
    # scales loaded later share the same values
    assert lazy.engines.engine("2x4").shared is lazy.engines.engine("1x2").shared


# ------------------------------------------------------------------------------------------------ generate


@pytest.mark.parametrize("schedule", ["1x2", ["2x4", [0.3, "2x2"], [0.6, "1x2"]]], ids=["single", "multi"])
def test_generate_equals_reference_sampler(public, schedule):
    fx, model, _, rt = public
    cf, cm = fx.get("in.cap_feats"), fx.get("in.cap_mask")
    kwargs = dict(frames=4, height=16, width=16, steps=7, schedule=schedule, time_shift=1.0, cfg=[3.0, [0.7, 0.0]])
    res = rt.generate(
        cap_feats=cf[:1], cap_mask=cm[:1], neg_cap_feats=cf[1:], neg_cap_mask=cm[1:], seed=5, progress=False, **kwargs
    )
    assert res.latents.shape == (1, 4, 4, 16, 16) and res.frames is None
    z = make_noise((1, 4, 4, 16, 16), 5)
    assert torch.equal(z, rt.pipeline.noise(1, 4, 16, 16, seed=5))
    with torch.no_grad():
        ref = sample_euler(model.velocity, z, Conditioning(cf[:1], cm[:1]), Conditioning(cf[1:], cm[1:]), res.config)
    assert rel_err(res.latents, ref) <= 1e-4
    assert set(res.steps) == ({"1x2"} if schedule == "1x2" else {"2x4", "2x2", "1x2"})
    assert res.config.P == schedule and res.config.step == 7


# A toy text encoder (hashing words into a fixed table), registered for the components test below.
@components.register_text_encoder("test-toy-text")
def _toy_text(directory: Path, spec: dict):
    return ToyText(load_file(str(directory / spec["weights"]))["table"])


class ToyText:
    def __init__(self, table: torch.Tensor):
        self.table = table
        self.feature_dim = int(table.shape[1])

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [[sum(map(ord, w)) % len(self.table) for w in (p.split() or ["<empty>"])] for p in prompts]
        length = max(len(i) for i in ids)
        feats = torch.zeros(len(ids), length, self.feature_dim)
        mask = torch.zeros(len(ids), length, dtype=torch.int64)
        for row, seq in enumerate(ids):
            feats[row, : len(seq)] = self.table[seq]
            mask[row, : len(seq)] = 1
        return feats, mask


SMALL = dict(
    dim=64, n_layers=1, n_heads=2, multiple_of=32, in_channels=3, cap_feat_dim=16, all_patch_size=[2, 4],
    all_f_patch_size=[1, 2], qk_norm=True, rope_theta=256.0, t_scale=1000.0, motion_scale=20.0,
)  # fmt: skip


@pytest.fixture(scope="module")
def with_components(tmp_path_factory):
    """A checkpoint with components.json (latent spec, toy text encoder, pixel decoder, a preset) and its engines."""
    root = tmp_path_factory.mktemp("components")
    torch.manual_seed(0)
    model = MultiScaleNextDiT(ModelConfig.from_kwargs(SMALL)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    ckpt = save_native(root / "ckpt", model.config, model.state_dict())
    save_file({"table": torch.randn(50, 16)}, str(ckpt / "toy_text.safetensors"))
    spec = {
        "latent": {"channels": 3, "temporal_factor": 1, "spatial_factor": 2, "scale": 0.5},
        "text_encoder": {"kind": "test-toy-text", "weights": "toy_text.safetensors"},
        "decoder": {"kind": "pixels"},
        "sampling": {"quick": {"P": ["2x4", [0.5, "1x2"]], "step": 4, "ts": 1.0, "cfg": 2.0, "motion": 1.0}},
    }
    (ckpt / "components.json").write_text(json.dumps(spec))
    shapes = ServeShapes(resolutions=((32, 32),), frames=(1, 4), max_batch=2, max_caption=16)
    eng = root / "engines"
    build(ckpt, eng, target="onnx", shapes=shapes, measure=False)
    return model, ckpt, eng


def test_generate_from_prompts_with_components(with_components, tmp_path):
    model, ckpt, eng = with_components
    assert (eng / "components.json").is_file() and (eng / "toy_text.safetensors").is_file()
    manifest = json.loads((eng / "manifest.json").read_text())
    assert manifest["default_sample_preset"] == "quick" and manifest["components"]["files"]
    shutil.rmtree(ckpt)  # the runtime reads only the engine directory
    rt = Runtime(eng)
    res = rt.generate(["a red ball", "blue sky"], frames=4, height=32, width=32, seed=1, progress=False)
    assert res.latents.shape == (2, 3, 4, 16, 16) and res.config.name == "quick"
    assert res.frames is not None and res.frames.shape == (2, 3, 4, 16, 16)
    torch.testing.assert_close(res.frames, ((res.latents / 0.5 + 1) / 2).clamp(0, 1))
    # the same run through the reference model and sampler
    enc = ToyText(load_file(str(eng / "toy_text.safetensors"))["table"])
    pos, neg = Conditioning(*enc.encode(["a red ball", "blue sky"])), Conditioning(*enc.encode(["", ""]))
    with torch.no_grad():
        ref = sample_euler(model.velocity, make_noise((2, 3, 4, 16, 16), 1), pos, neg, res.config, progress=False)
    assert rel_err(res.latents, ref) <= 1e-4

    import imageio.v2 as imageio

    for suffix in (".mp4", ".gif"):
        path = res.save(tmp_path / f"video{suffix}", fps=4, scale=2)
        frames = imageio.mimread(path)
        assert len(frames) == 4 and frames[0].shape[:2] == (32, 64)  # two videos side by side, upscaled 2x


def test_generate_input_errors(with_components, public):
    _, _, eng = with_components
    rt = Runtime(eng)
    with pytest.raises(InputError, match="needs a prompt or caption features"):
        rt.generate(progress=False)
    with pytest.raises(InputError, match="height=31 is not a multiple of the latent spatial factor 2"):
        rt.generate("x", frames=4, height=31, width=32, progress=False)
    with pytest.raises(InputError, match=r"height=20: scale 2x4 of this schedule takes a multiple of 8"):
        rt.generate("x", frames=4, height=20, width=32, progress=False)
    with pytest.raises(EngineError, match="outside every built profile of scale 2x4"):
        rt.generate("x", frames=4, height=64, width=64, progress=False)
    with pytest.raises(ScheduleError, match=r"unknown sample preset 'nope'; known presets: \[.*'quick'"):
        rt.generate("x", preset="nope", progress=False)
    with pytest.raises(ScheduleError, match="unknown patch combo '2x2'"):
        rt.generate("x", frames=4, height=32, width=32, schedule="2x2", progress=False)
    fx, _, _, plain = public
    with pytest.raises(TextEncoderError, match="has no text encoder"):
        plain.generate("a prompt", frames=4, height=16, width=16, steps=3, progress=False)
    with pytest.raises(InputError, match="needs a negative condition"):
        plain.generate(cap_feats=fx.get("in.cap_feats")[:1], frames=4, height=16, width=16, steps=3, progress=False)


def test_generate_command_writes_a_video(public, tmp_path):
    fx, _, eng, _ = public
    feats = tmp_path / "caption.safetensors"
    save_file(
        {"cap_feats": fx.get("in.cap_feats")[:1].contiguous(), "cap_mask": fx.get("in.cap_mask")[:1].contiguous()},
        str(feats),
    )
    out = tmp_path / "v.gif"
    res = subprocess.run(
        [*CLI, "generate", str(eng), "--caption-features", str(feats), "--out",
         str(out), "--frames", "2", "--height", "16", "--width", "16", "--steps", "3", "--schedule", "1x2",
         "--cfg", "0", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"wrote {out}" in res.stdout and "latent preview" in res.stdout and out.is_file()
    assert "3-point time grid, 2 model evaluations" in res.stdout


# ------------------------------------------------------------------------------------------------ typed errors


def _copy(eng: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "eng"
    shutil.copytree(eng, dst)
    return dst


def test_missing_or_corrupt_engine_files(public, tmp_path):
    _, _, eng, _ = public
    d = _copy(eng, tmp_path)
    (d / "velocity_2x2.onnx").unlink()
    with pytest.raises(EngineError, match=r"ONNX graph of scale 2x2 file .*velocity_2x2.onnx.* is missing"):
        Runtime(d)
    d = _copy(eng, tmp_path / "b")
    data = bytearray((d / "velocity_1x2.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "velocity_1x2.onnx").write_bytes(bytes(data))
    with pytest.raises(EngineError, match=r"velocity_1x2.onnx.* is corrupt: its SHA-256"):
        Runtime(d)
    (d / "velocity_1x2.onnx").write_bytes(b"\x00garbage" * (len(data) // 8) + b"\x00" * (len(data) % 8))
    with pytest.raises(EngineError, match=r"ONNX graph .*velocity_1x2.onnx.* is corrupt"):
        Runtime(d, verify=False)
    d = _copy(eng, tmp_path / "c")
    with open(d / "weights.bin", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x01\x02\x03\x04")
    with pytest.raises(EngineError, match=r"weights file .*weights.bin.* is corrupt or from another build"):
        Runtime(d)
    with open(d / "weights.bin", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(EngineError, match=r"weights.bin.* is corrupt: 1000 bytes"):
        Runtime(d)


def test_manifest_from_another_version_config_or_weights(public, tmp_path):
    fx, _, eng, rt = public
    d = _copy(eng, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps({**m, "format_version": 0}))
    with pytest.raises(EngineError, match="manifest format version 0"):
        Runtime(d)
    (d / "manifest.json").write_text(json.dumps({**m, "lumina_rt_version": "0.0.1"}))
    with pytest.raises(EngineError, match="built by lumina_rt 0.0.1"):
        Runtime(d)
    rt.engines.check_config(fx.config)
    with pytest.raises(EngineError, match=r"another model config \(dim: engines 128 vs 192"):
        rt.engines.check_config(load_fixture(fixture_path("dim192-3heads-1kv")).config)
    rt.engines.check_weights(m["model"]["weights_hash"])
    with pytest.raises(EngineError, match="built from other weights"):
        rt.engines.check_weights("0" * 64)
    other = engines("dim192-3heads-1kv")[1]  # a weight file of other weights under this manifest
    shutil.copy(other / "weights.bin", d / "weights.bin")
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineError, match="weights"):
        Runtime(d)


def test_shapes_outside_every_profile(public):
    fx, _, _, rt = public
    x = fx.get("in.x")
    t, cf, cm, m = fx.get("in.t"), fx.get("in.cap_feats"), fx.get("in.cap_mask"), fx.get("in.motion")
    long_caption = torch.randn(2, 300, 48)
    with pytest.raises(EngineError, match=r"caption length 300 is outside every built profile .*1\.\.256"):
        rt.engines.velocity(x, t, long_caption, torch.ones(2, 300, dtype=torch.int64), m, "1x2")
    rep = (5, 1, 1, 1, 1)
    with pytest.raises(EngineError, match=r"batch 10 is outside every built profile of scale 2x2 \(batch 1\.\.4\)"):
        rt.engines.velocity(x.repeat(rep), t.repeat(5), cf.repeat(5, 1, 1), cm.repeat(5, 1), m.repeat(5), "2x2")
    with pytest.raises(InputError, match="unsupported resolution 8x16x18"):
        rt.engines.velocity(torch.randn(2, 4, 8, 16, 18), t, cf, cm, m, "2x4")
    with pytest.raises(EngineError, match=r"no engine for patch combo '3x3'"):
        rt.engines.velocity(x, t, cf, cm, m, "3x3")
    assert np.isfinite(rt.engines.velocity(x, t, cf, cm, m, "2x4").numpy()).all()
