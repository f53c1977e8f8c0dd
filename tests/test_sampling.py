"""Time-aware values, presets, the shifted grid and the guided step, against hand-computed references."""

from __future__ import annotations

import pytest
import torch

from lumina_rt.errors import ScheduleError
from lumina_rt.sampling import (
    SAMPLE_PRESETS,
    Conditioning,
    SampleConfig,
    guided_velocity,
    sample_euler,
    time_aware_value,
    time_grid,
)


def test_time_aware_values():
    cfg = ["2x4", [0.03, "2x2"], [0.125, "1x2"]]
    assert time_aware_value(cfg, 0.0) == "2x4"
    assert time_aware_value(cfg, 0.03) == "2x2"
    assert time_aware_value(cfg, 0.1) == "2x2"
    assert time_aware_value(cfg, 0.9) == "1x2"
    assert time_aware_value(6.0, 0.5) == 6.0
    assert time_aware_value([20.0, [0.2, 0.0]], 0.19) == 20.0


@pytest.mark.parametrize(
    "bad",
    [[], [[0.1, 2.0]], [1.0, [0.5]], [1.0, [1.5, 2.0]], [1.0, [0.5, 2.0], [0.2, 3.0]], {"a": 1}, [1.0, ["x", 2]], True],
)
def test_malformed_time_aware_config(bad):
    with pytest.raises(ScheduleError) as info:
        time_aware_value(bad, 0.5, "cfg")
    assert "cfg" in str(info.value)


def test_presets_are_the_released_ones():
    assert sorted(SAMPLE_PRESETS) == sorted(
        ["f24F96R960", "f24F96R960-MultiScale", "f16F64R512", "f16F64R512-MultiScale"]
    )
    p = SampleConfig.from_name("f24F96R960-MultiScale")
    assert (p.step, p.ts, p.renorm, p.cfg, p.motion, p.negMotion) == (70, 24.0, 2.0, [20.0, [0.2, 0.0]], 6.0,
                                                                       [2.0, [0.05, 6.0]])  # fmt: skip
    assert p.P == ["2x4", [0.03, "2x2"], [0.125, "1x2"]]
    assert SampleConfig.from_name("f16F64R512").renorm == -1.0
    with pytest.raises(ScheduleError, match="nope"):
        SampleConfig.from_name("nope")
    with pytest.raises(ScheduleError, match="3x3"):
        SampleConfig(P="3x3").validate(patch_combos=["1x2", "2x2", "2x4"])
    with pytest.raises(ScheduleError, match="combo"):
        SampleConfig(P="fine")


def test_time_grid():
    g = time_grid(6, 4.0)
    t = torch.linspace(0, 1, 6)
    torch.testing.assert_close(g, t / (t + 4.0 - 4.0 * t))
    assert g[0] == 0 and g[-1] == 1
    with pytest.raises(ScheduleError):
        time_grid(1, 4.0)


class _Recorder:
    """A velocity function with known outputs that records the batches it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cap_feats, cap_mask, motion, combo):
        self.calls.append(dict(b=x.shape[0], t=t.clone(), motion=motion.clone(), combo=combo, L=cap_feats.shape[1]))
        # positive rows: x; negative rows: 0.5 * x (distinguished by the motion value)
        return torch.where((motion > 4)[:, None, None, None, None], x, 0.5 * x)


def _conds(b=1):
    pos = Conditioning(torch.randn(b, 5, 4), torch.ones(b, 5, dtype=torch.long))
    neg = Conditioning(torch.randn(b, 3, 4), torch.ones(b, 3, dtype=torch.long))
    return pos, neg


def test_guided_step_batches_pos_and_neg_and_renorms():
    f = _Recorder()
    pos, neg = _conds()
    x = torch.randn(1, 2, 2, 4, 4)
    cfg = SampleConfig(P=["2x4", [0.5, "1x2"]], cfg=[4.0, [0.5, 0.0]], motion=6.0, negMotion=2.0, renorm=2.0)
    v = guided_velocity(f, x, 0.25, pos, neg, cfg)
    call = f.calls[-1]
    assert call["b"] == 2 and call["combo"] == "2x4" and call["L"] == 5
    assert call["motion"].tolist() == [6.0, 2.0]
    raw = x + 4.0 * (x - 0.5 * x)  # 3x, norm 3|x| > 2|x| -> renormed to 2x
    torch.testing.assert_close(v, raw * (2.0 * x.norm() / raw.norm()))
    # without renorm
    v = guided_velocity(f, x, 0.25, pos, neg, cfg.replace(renorm=-1.0))
    torch.testing.assert_close(v, 3.0 * x)
    # cfg scale 0 at t >= 0.5: the negative branch is skipped entirely
    v = guided_velocity(f, x, 0.75, pos, neg, cfg)
    assert f.calls[-1]["b"] == 1 and f.calls[-1]["combo"] == "1x2"
    torch.testing.assert_close(v, x)


def test_euler_follows_the_grid():
    """With v(x) = x (cfg off) each Euler step multiplies by (1 + dt)."""
    f = _Recorder()
    pos, neg = _conds()
    z = torch.randn(1, 2, 2, 4, 4)
    cfg = SampleConfig(P="1x2", cfg=0.0, motion=6.0, step=5, ts=3.0)
    traj = sample_euler(f, z, pos, neg, cfg, progress=False, return_trajectory=True)
    grid = time_grid(5, 3.0).tolist()
    expect = z.clone()
    for k in range(4):
        expect = expect + (grid[k + 1] - grid[k]) * expect
        torch.testing.assert_close(traj[k + 1], expect)
    assert [c["t"][0].item() for c in f.calls] == pytest.approx(grid[:-1])
