"""Both checkpoint layouts, built in a temp dir from fixture weights; prefixes; unsafe pickles; bad files."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from lumina_rt.checkpoint import load_config, load_model, save_native, weights_hash
from lumina_rt.errors import CheckpointError, UnsafeCheckpointError
from lumina_rt.parity import ModelParityTarget, load_fixture, run_parity
from tests._paths import PUBLIC_FIXTURE, require


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(require(PUBLIC_FIXTURE))


def _released_args(cfg) -> argparse.Namespace:
    # What the released training script stores, plus the size arguments of this small model.
    return argparse.Namespace(
        model="MultiScaleNextDiT", qk_norm=cfg.qk_norm, patch_sizes=list(cfg.all_patch_size),
        f_patch_sizes=list(cfg.all_f_patch_size), rope_theta=cfg.rope_theta, t_scale=cfg.t_scale,
        motion_scale=cfg.motion_scale, dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads, multiple_of=cfg.multiple_of, lr=2e-4, grad_clip=2.0,
    )  # fmt: skip


def _assert_parity(model, fixture):
    results = run_parity(fixture, ModelParityTarget(model))
    assert max(r.rel_err for r in results) <= 1e-5


def test_native_layout_round_trip(tmp_path, fixture):
    save_native(tmp_path, fixture.config, fixture.state_dict)
    assert json.loads((tmp_path / "config.json").read_text()) == fixture.config.to_kwargs()
    assert load_config(tmp_path) == fixture.config
    _assert_parity(load_model(tmp_path), fixture)
    assert len(weights_hash(tmp_path)) == 64


@pytest.mark.parametrize("weights", ["safetensors", "pth"])
def test_released_layout_with_orig_mod_prefix(tmp_path, fixture, weights):
    torch.save(_released_args(fixture.config), tmp_path / "model_args.pth")
    sd = {f"_orig_mod.{k}": v.clone() for k, v in fixture.state_dict.items()}
    if weights == "safetensors":
        save_file(sd, str(tmp_path / "consolidated.00-of-01.safetensors"))
    else:
        torch.save(sd, tmp_path / "consolidated.00-of-01.pth")
    cfg = load_config(tmp_path)
    assert cfg.to_kwargs() == fixture.config.to_kwargs()
    _assert_parity(load_model(tmp_path), fixture)


def test_released_constructor_sizes_and_shape_inference(tmp_path):
    """A real released model_args.pth names only the constructor; sizes come from it, channels from the weights."""
    from lumina_rt.checkpoint import config_from_released_args

    args = dict(model="MultiScaleNextDiT_2B_GQA", qk_norm=True, patch_sizes=[2, 2, 4], f_patch_sizes=[1, 2, 2],
                rope_theta=256.0, t_scale=1000.0, motion_scale=20.0)  # fmt: skip
    sd = {"cap_embedder.0.weight": torch.empty(2304), "all_x_embedder.2-1.weight": torch.empty(2304, 64)}
    cfg = config_from_released_args(args, sd)
    from lumina_rt.config import ModelConfig

    assert cfg.to_kwargs() == ModelConfig.from_name("f24R960").to_kwargs()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/lumina_rt_pwned",))


def test_malicious_model_args_is_refused(tmp_path, fixture):
    marker = "/tmp/lumina_rt_pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    torch.save({"args": _Evil()}, tmp_path / "model_args.pth")
    save_file(fixture.state_dict, str(tmp_path / "consolidated.00-of-01.safetensors"))
    with pytest.raises(UnsafeCheckpointError, match="allow-list"):
        load_model(tmp_path)
    assert not os.path.exists(marker), "the pickle's payload ran"


def test_malicious_pth_weights_are_refused(tmp_path, fixture):
    torch.save(_released_args(fixture.config), tmp_path / "model_args.pth")
    torch.save({"w": _Evil()}, tmp_path / "consolidated.00-of-01.pth")
    with pytest.raises(UnsafeCheckpointError):
        load_model(tmp_path)


def test_missing_and_wrong_files(tmp_path, fixture):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(tmp_path)
    save_native(tmp_path, fixture.config, fixture.state_dict)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_model(tmp_path)


def test_strict_load_names_missing_keys(tmp_path, fixture):
    sd = fixture.state_dict
    sd.pop("layers.0.attention.wk_y.weight")
    save_native(tmp_path, fixture.config, sd)
    with pytest.raises(CheckpointError, match="wk_y"):
        load_model(tmp_path)


def test_unknown_constructor(tmp_path, fixture):
    args = _released_args(fixture.config)
    args.model = "NextDiT_9B"
    torch.save(args, tmp_path / "model_args.pth")
    save_file(fixture.state_dict, str(tmp_path / "consolidated.00-of-01.safetensors"))
    with pytest.raises(CheckpointError, match="NextDiT_9B"):
        load_model(tmp_path)
