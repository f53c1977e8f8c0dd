"""Bad input raises a typed error that names the bad value."""

from __future__ import annotations

import pytest
import torch

from lumina_rt.config import ModelConfig
from lumina_rt.errors import ConfigError, InputError, ScheduleError
from lumina_rt.model import MultiScaleNextDiT
from lumina_rt.sampling import Conditioning, SampleConfig, sample_euler


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MultiScaleNextDiT(ModelConfig.from_name("tiny")).eval()


def _args(b=2, c=4, f=4, h=8, w=8, length=5):
    return (torch.randn(b, c, f, h, w), torch.rand(b), torch.randn(b, length, 48),
            torch.ones(b, length, dtype=torch.long), torch.zeros(b))  # fmt: skip


def test_sizes_not_divisible_by_patch(model):
    x, t, cf, cm, m = _args(h=9)
    with pytest.raises(InputError, match="height=9"):
        model(x, t, cf, cm, m, 2, 1)
    x, t, cf, cm, m = _args(w=10)
    with pytest.raises(InputError, match="width=10.*spatial patch size 4"):
        model(x, t, cf, cm, m, 4, 2)
    x, t, cf, cm, m = _args(f=3)
    with pytest.raises(InputError, match="frames=3"):
        model(x, t, cf, cm, m, 2, 2)


def test_unknown_patch_combo(model):
    with pytest.raises(ConfigError, match="'2x8'"):
        model(*_args(), 8, 2)
    with pytest.raises(ConfigError, match="combo"):
        model.velocity(*_args(), "fine")


def test_mismatched_caption_and_batch(model):
    x, t, cf, cm, m = _args()
    with pytest.raises(InputError, match="cap_feats"):
        model(x, t, cf[:1], cm[:1], m, 2, 1)
    with pytest.raises(InputError, match="cap_mask"):
        model(x, t, cf, cm[:, :3], m, 2, 1)
    with pytest.raises(InputError, match="cap_feats must be"):
        model(x, t, torch.randn(2, 5, 32), cm, m, 2, 1)
    with pytest.raises(InputError, match=r"t must have shape \(2,\)"):
        model(x, t[:1], cf, cm, m, 2, 1)
    with pytest.raises(InputError, match="channels"):
        model(torch.randn(2, 3, 4, 8, 8), t, cf, cm, m, 2, 1)
    cm0 = cm.clone()
    cm0[1] = 0
    with pytest.raises(InputError, match=r"caption rows \[1\]"):
        model(x, t, cf, cm0, m, 2, 1)


@pytest.mark.parametrize("which", ["x", "t", "cap_feats", "motion_score"])
def test_nan_inputs(model, which):
    x, t, cf, cm, m = _args()
    named = dict(x=x, t=t, cap_feats=cf, motion_score=m)
    named[which].view(-1)[0] = float("nan")
    with pytest.raises(InputError, match=f"{which} contains NaN"):
        model(x, t, cf, cm, m, 2, 1)


def test_malformed_schedule_in_sampler(model):
    with pytest.raises(ScheduleError, match="P"):
        SampleConfig(P=["1x2", [0.5]])
    pos = Conditioning(torch.randn(1, 5, 48), torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(ScheduleError, match="2x8"):
        sample_euler(model.velocity, torch.randn(1, 4, 2, 8, 8), pos, None,
                     SampleConfig(P="2x8", step=3), progress=False, patch_combos=model.config.patch_combos)  # fmt: skip
    with pytest.raises(InputError, match="NaN"):
        sample_euler(model.velocity, torch.full((1, 4, 2, 8, 8), float("nan")), pos, None,
                     SampleConfig(step=3), progress=False)  # fmt: skip
    with pytest.raises(InputError, match="negative caption"):
        sample_euler(model.velocity, torch.randn(1, 4, 2, 8, 8), pos, None,
                     SampleConfig(step=3, cfg=2.0), progress=False)  # fmt: skip


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown model size 'huge'"):
        ModelConfig.from_name("huge")
    with pytest.raises(ConfigError, match="n_kv_heads=3"):
        ModelConfig(dim=128, n_heads=4, n_kv_heads=3)
    with pytest.raises(ConfigError, match="head_dim=20"):
        ModelConfig(dim=40, n_heads=2)
    with pytest.raises(ConfigError, match="bogus"):
        ModelConfig.from_kwargs({"dim": 64, "bogus": 1})
