"""V2A trainer (lumina_rt.v2a.train): a tiny run learns, resuming is exact, exports load, configs are checked."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lumina_rt.errors import ConfigError
from lumina_rt.training.core import flow_matching_inputs, flow_matching_loss, step_generator
from lumina_rt.v2a.codec import log_mel
from lumina_rt.v2a.pipeline import V2APipeline
from lumina_rt.v2a.train import V2ATrainConfig, batch_shape, setup, train_step, train_v2a


def tiny_config(iters: int, **train) -> dict:
    return dict(
        model=dict(size="tiny"),
        train=dict(seed=0, batch_size=8, lr=2e-3, warmup=5, log_every=2, ckpt_every=3, threads=1, **train),
        v2a=dict(iters=iters, long_every=3, codec_fit_clips=32),
    )


def fixed_loss(run, n: int = 16) -> float:
    """Flow-matching loss of the run's model on fixed clips, noise and times (no dropout)."""
    clips = run.dataset.clips("train", 10**6, n, 8)
    x1 = run.codec.encode(log_mel(torch.stack([c.wave for c in clips]), run.cfg.audio))
    feats, mask = run.encoder.encode([c.caption for c in clips])
    xt, t, target = flow_matching_inputs(x1, 1.0, "uniform", torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = run.model.velocity(xt, t, torch.stack([c.frames for c in clips]), feats, mask, torch.ones(n))
    return float(flow_matching_loss(pred, target))


def test_a_tiny_run_reduces_the_loss(tmp_path):
    torch.set_num_threads(1)
    run = setup(V2ATrainConfig.load(tiny_config(40)), tmp_path)
    before = fixed_loss(run)
    for _ in range(40):
        train_step(run)
        run.step += 1
    after = fixed_loss(run)
    assert after < 0.8 * before, (before, after)


def test_resume_is_exact_and_the_export_loads(tmp_path):
    cfg = tiny_config(6)
    train_v2a(cfg, tmp_path / "a", export_dir=tmp_path / "a_export", progress=False, threads=1)
    first = train_v2a(cfg, tmp_path / "b", stop_after=3, export_dir=tmp_path / "b_export", progress=False, threads=1)
    assert first["step"] == 3 and first["export"] is None
    second = train_v2a(cfg, tmp_path / "b", export_dir=tmp_path / "b_export", progress=False, threads=1)
    assert second["step"] == 6
    a, b = (
        load_file(str(tmp_path / "a_export" / "model.safetensors")),
        load_file(str(tmp_path / "b_export" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = {
        r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "a" / "train_log.jsonl").read_text().splitlines())
    }
    log_b = {
        r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "b" / "train_log.jsonl").read_text().splitlines())
    }
    assert sorted(log_a) == [2, 4, 6] and sorted(log_b) == [2, 3, 4, 6]  # the interruption logged step 3
    assert log_a[2] == log_b[2] and log_a[6] == log_b[6]
    pipe = V2APipeline.from_dir(tmp_path / "a_export")
    assert pipe.generate_audio(torch.rand(3, 8, 32, 32), steps=2, progress=False).shape == (16000,)


def test_step_draws_and_batch_shapes_are_pure_functions_of_the_step():
    assert torch.equal(
        torch.rand(4, generator=step_generator(0, 5, 0)), torch.rand(4, generator=step_generator(0, 5, 0))
    )
    assert not torch.equal(
        torch.rand(4, generator=step_generator(0, 5, 0)), torch.rand(4, generator=step_generator(0, 6, 0))
    )
    v = V2ATrainConfig.load(tiny_config(6)).v2a
    assert [batch_shape(v, 8, s) for s in range(3)] == [(8, 8), (8, 8), (4, 16)]


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(v2a=dict(iters=0)), "iters must be a positive integer"),
        (dict(v2a=dict(video_drop=1.5)), "video_drop"),
        (dict(v2a=dict(colour=1)), "unknown v2a keys"),
        (dict(train=dict(batchsize=2)), "unknown train keys"),
        (dict(model=dict(size="tiny", latent_channels=5)), "codec_channels"),
        (dict(audio=dict(n_mels=48)), "latent grid"),
        (dict(extra={}), "unknown V2A training config sections"),
    ],
)
def test_config_errors_name_the_bad_value(change, match):
    raw = tiny_config(5)
    for k, v in change.items():
        raw[k] = {**raw.get(k, {}), **v}
    with pytest.raises(ConfigError, match=match):
        V2ATrainConfig.load(raw)
