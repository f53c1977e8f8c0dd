"""The shipped built-in model: complete folder, loads, generates through the reference sampler, follows colour."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from lumina_rt import components
from lumina_rt.builtin import builtin_dir
from lumina_rt.builtin.reference import generate_reference
from lumina_rt.checkpoint import load_model
from lumina_rt.data.motion import analyse_frames
from lumina_rt.errors import TextEncoderError

BUILTIN = builtin_dir()


def test_folder_is_complete_and_small():
    names = {p.name for p in BUILTIN.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "components.json",
        "text_encoder.safetensors",
        "text_vocab.txt",
        "train_log.jsonl",
        "eval.json",
        "eval_heldout.json",
    } <= names
    # one sub-folder: the built-in V2A model (tests/test_v2a.py), shipped by setup.py's package data
    assert not any(p.is_dir() for p in BUILTIN.iterdir() if p.name not in ("__pycache__", "v2a"))
    assert (BUILTIN / "model.safetensors").stat().st_size <= 25 * 1024 * 1024
    comps = json.loads((BUILTIN / "components.json").read_text())
    assert comps["text_encoder"]["kind"] == "lumina-tiny-text" and comps["decoder"]["kind"] == "lumina-tiny-pca"
    spec = components.latent_spec(BUILTIN, default_channels=16)
    assert spec.channels == load_model(BUILTIN).config.in_channels == 12
    assert spec.latent_shape(8, 32, 32) == (8, 8, 8)
    assert len(json.loads((BUILTIN / "eval.json").read_text())["schedules"]) == 2
    assert json.loads((BUILTIN / "eval_heldout.json").read_text())["split"] == "heldout"


def test_components_load_through_the_registry():
    enc = components.load_text_encoder(BUILTIN)
    feats, mask = enc.encode(["a red circle moving left quickly", ""])
    assert feats.shape[0] == 2 and feats.shape[2] == enc.feature_dim == load_model(BUILTIN).config.cap_feat_dim
    assert int(mask[1].sum()) > 0  # the empty (negative) prompt keeps the system prompt
    dec = components.load_decoder(BUILTIN)
    frames = dec.decode(torch.zeros(1, 12, 8, 8, 8))
    assert frames.shape == (1, 3, 8, 32, 32) and 0.0 <= float(frames.min()) <= float(frames.max()) <= 1.0
    assert sorted(p.as_posix() for p in components.component_files(BUILTIN)) == sorted(
        ["components.json", "text_encoder.safetensors", "text_vocab.txt", "autoencoder.safetensors"]
    )


def test_generates_video_with_requested_colour():
    prompts = [
        "a red circle moving left quickly on a plain background",
        "a blue circle moving up steadily on a striped background",
    ]
    video = generate_reference(prompts, steps=10, sample="single_scale", motion=[2.2, 1.3], seed=1)
    assert video.shape == (2, 3, 8, 32, 32)
    assert float(video.min()) >= 0.0 and float(video.max()) <= 1.0
    assert [analyse_frames(v).colour for v in video] == ["red", "blue"]


def test_engines_default_to_the_multiscale_preset():
    from lumina_rt.builtin import BUILTIN_MULTI
    from lumina_rt.builtin.reference import sample_presets
    from lumina_rt.export.build_engines import _default_preset

    presets = sample_presets(BUILTIN)
    assert presets["multi_scale"] == BUILTIN_MULTI and set(presets) == {"multi_scale", "single_scale"}
    assert _default_preset(load_model(BUILTIN).config, presets, None) == "multi_scale"


def test_text_encoder_names_unknown_words_once_per_call(caplog):
    enc = components.load_text_encoder(BUILTIN)
    with caplog.at_level(logging.WARNING, logger="lumina_rt.components.tiny"):
        enc.encode(["a red circle moving left quickly", ""])
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="lumina_rt.components.tiny"):
        feats, _ = enc.encode(["a purple dragon moving left", "a purple circle"])
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert "['purple', 'dragon']" in msg and f"{len(enc.vocab)}-word vocabulary" in msg and "<unk>" in msg
    assert feats.shape[0] == 2  # still encoded, as <unk>
    with pytest.raises(TextEncoderError, match=r"\['purple', 'dragon'\]"):
        enc.encode(["a purple dragon moving left"], strict=True)
    enc.encode(["a red circle moving left quickly"], strict=True)  # known words pass


def test_generate_builtin_in_bf16(tmp_path):
    """`lumina-rt generate --builtin --precision bf16`: bf16 torch engines in their own cache folder, colour kept."""
    import os
    import subprocess
    import sys

    import imageio.v2 as imageio
    import numpy as np

    from lumina_rt.engines.torch_engine import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 arithmetic (AVX512-BF16 / AMX): bf16 engines are refused here")
    env = {**os.environ, "LUMINA_RT_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "v.gif"
    cmd = [sys.executable, "-m", "lumina_rt", "generate", "--builtin", "--precision", "bf16", "--no-progress",
           "--prompt", "a green square moving down steadily", "--out", str(out), "--scale", "1"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((tmp_path / "cache" / "engines" / "builtin-bf16" / "manifest.json").read_text())
    assert manifest["precision"] == "bf16"
    video = torch.from_numpy(np.stack(imageio.mimread(out))[..., :3]).float().permute(3, 0, 1, 2) / 255
    assert video.shape[:2] == (3, 8) and analyse_frames(video).colour == "green"
    res = subprocess.run([sys.executable, "-m", "lumina_rt", "generate", str(tmp_path / "eng"), "--precision", "bf16",
                          "--prompt", "x"], capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert res.returncode != 0 and "--precision bf16 applies to --builtin" in res.stderr
