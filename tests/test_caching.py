"""Step caching (`lumina_rt.caching`): the policy's rules, its counts, its levels, and the engines it runs with."""

from __future__ import annotations

import pytest
import torch

from lumina_rt.caching import LEVELS, StepCache
from lumina_rt.errors import ScheduleError
from lumina_rt.sampling import Conditioning, SampleConfig, sample_euler, segment_key, time_grid
from tests._engine_fixtures import engines, fixture_path

MULTI = SampleConfig.from_dict(
    dict(P=["2x4", [0.2, "2x2"], [0.5, "1x2"]], step=24, ts=2.0, cfg=[4.0, [0.7, 0.0]], motion=1.0, negMotion=0.5)
)


def smooth_velocity(calls: list):
    """A velocity field smooth in t whose size depends on the patch combo (so a reuse across scales would show)."""
    scale = {"2x4": 1.0, "2x2": 2.0, "1x2": 3.0}

    def v(x, t, cap_feats, cap_mask, motion, combo):
        calls.append((float(t[0]), combo, x.shape[0]))
        return -x * (1.0 + t.view(-1, 1, 1, 1, 1)) * scale[combo] + motion.view(-1, 1, 1, 1, 1)

    return v


def conditions(batch: int = 2):
    g = torch.Generator().manual_seed(0)
    pos = Conditioning(torch.randn(batch, 5, 8, generator=g), torch.ones(batch, 5, dtype=torch.int64))
    neg = Conditioning(torch.randn(batch, 3, 8, generator=g), torch.ones(batch, 3, dtype=torch.int64))
    z = torch.randn(batch, 4, 2, 8, 8, generator=g)
    return z, pos, neg


@pytest.mark.parametrize("policy", [StepCache(0.6), StepCache(3.0, max_skips=2), StepCache(10.0, mode="reuse")])
def test_policy_rules_hold_on_a_multi_scale_schedule(policy):
    calls: list = []
    z, pos, neg = conditions()
    run = policy.start()
    sample_euler(smooth_velocity(calls), z, pos, neg, MULTI, progress=False, cache=run)
    grid = time_grid(MULTI.step, MULTI.ts).tolist()
    assert len(run.log) == len(grid) - 1 and run.reused > 0
    # the number of model evaluations is what the policy logged, per scale too
    assert len(calls) == run.evaluations == sum(1 for *_, d in run.log if d == "evaluate")
    for combo, s in run.stats.items():
        assert s["evaluated"] == sum(1 for _, c, _ in calls if c == combo)
    assert run.log[-1][3] == "evaluate"  # the last step always runs the model
    segments = [segment_key(MULTI, t) for _, t, _, _ in run.log]
    skips = 0
    for i, (_, _, _, decision) in enumerate(run.log):
        start = next(j for j in range(i, -1, -1) if j == 0 or segments[j - 1] != segments[i])
        evaluated_before = [d for *_, d in run.log[start:i] if d == "evaluate"]
        if decision == "reuse":
            # never across a segment switch (patch size, guidance or motion change): two evaluations of this segment
            assert len(evaluated_before) >= policy.warmup, (i, run.log[start : i + 1])
            skips += 1
            assert skips <= policy.max_skips
        else:
            skips = 0
        if i - start < policy.warmup:
            assert decision == "evaluate"


def test_prediction_is_first_order_extrapolation_in_t():
    run = StepCache(1.0).start()
    v0, v1 = torch.full((2, 3), 1.0), torch.full((2, 3), 3.0)
    run.record(0.1, v0)
    run.record(0.2, v1)
    torch.testing.assert_close(run.predict(0.25), torch.full((2, 3), 4.0))
    reuse = StepCache(1.0, mode="reuse").start()
    reuse.record(0.1, v0)
    reuse.record(0.2, v1)
    assert torch.equal(reuse.predict(0.25), v1)


def test_threshold_zero_evaluates_every_step_and_matches_the_uncached_sampler():
    z, pos, neg = conditions()
    plain = sample_euler(smooth_velocity([]), z, pos, neg, MULTI, progress=False)
    run = StepCache(0.0).start()
    cached = sample_euler(smooth_velocity([]), z, pos, neg, MULTI, progress=False, cache=run)
    assert run.reused == 0 and torch.equal(plain, cached)


def test_levels_and_bad_settings():
    assert StepCache.from_setting("off") is None and StepCache.from_setting(None) is None
    safe, fast = StepCache.from_setting("safe"), StepCache.from_setting("fast")
    assert (safe.threshold, safe.max_skips) == LEVELS["safe"] and fast.threshold > safe.threshold
    assert StepCache.from_setting("0.3").threshold == 0.3 and StepCache.from_setting(0.3).name == "threshold 0.3"
    with pytest.raises(ScheduleError, match=r"unknown cache level 'quick'; choose one of \['off', 'safe', 'fast'\]"):
        StepCache.from_setting("quick")
    with pytest.raises(ScheduleError, match=r"cache threshold must be a number >= 0, got -0.5"):
        StepCache.from_setting(-0.5)
    with pytest.raises(ScheduleError, match="max_skips must be >= 1"):
        StepCache(1.0, max_skips=0)
    with pytest.raises(ScheduleError, match="unknown cache mode 'cubic'"):
        StepCache(1.0, mode="cubic")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_cache_with_engines(backend):
    from lumina_rt.parity import load_fixture
    from lumina_rt.runtime import Runtime

    _, eng, _ = engines("public")
    fx = load_fixture(fixture_path("public"))
    rt = Runtime(eng, backend=backend)
    kw = dict(cap_feats=fx.get("in.cap_feats")[:1], cfg=0.0, time_shift=1.0, frames=8, height=16, width=16, steps=20,
              schedule=["2x4", [0.3, "2x2"], [0.6, "1x2"]], seed=0, progress=False)  # fmt: skip
    off = rt.generate(**kw)
    assert off.cache is None and off.evaluations == 19
    assert torch.equal(rt.generate(cache="off", **kw).latents, off.latents)  # "off" is the plain sampler
    cached = rt.generate(cache="safe", **kw)
    c = cached.cache
    assert c["policy"] == "safe" and c["evaluations"] == cached.evaluations < off.evaluations
    assert c["evaluations"] + c["reused"] == 19 and set(c["per_scale"]) == {"2x4", "2x2", "1x2"}
    assert all(s["evaluated"] >= 2 for s in c["per_scale"].values())
    rel = float(torch.linalg.vector_norm(cached.latents - off.latents) / torch.linalg.vector_norm(off.latents))
    assert rel < 0.1
