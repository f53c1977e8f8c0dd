"""Lumina-V2A model and pipeline (lumina_rt.v2a.model, lumina_rt.v2a.pipeline): shapes, masks, zero-initialised
paths, typed errors, and the shipped built-in model's sync and pitch on held-out clips."""

import json
from pathlib import Path

import pytest
import torch

from lumina_rt.builtin import builtin_v2a_dir
from lumina_rt.components.tiny import TinyTextEncoder
from lumina_rt.data.sound import HELD_OUT_SOUNDS, SoundDataset
from lumina_rt.errors import CheckpointError, ConfigError, InputError
from lumina_rt.v2a.codec import AudioCodec, AudioSpec, log_mel
from lumina_rt.v2a.eval import heldout_clips, score_clip, summarise
from lumina_rt.v2a.model import V2AConfig, V2AModel, audio_rope_tables, frame_to_token_weights
from lumina_rt.v2a.pipeline import V2APipeline

SPEC = AudioSpec()


def inputs(cfg: V2AConfig, b: int = 2, frames: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, cfg.latent_channels, frames * cfg.latent_frames_per_video_frame, cfg.latent_bands, generator=g)
    video = torch.rand(b, 3, frames, cfg.frame_size, cfg.frame_size, generator=g)
    feats = torch.randn(b, 7, cfg.cap_feat_dim, generator=g)
    mask = torch.ones(b, 7, dtype=torch.int64)
    return z, torch.rand(b, generator=g), video, feats, mask, torch.ones(b)


def randomise(module: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return V2AModel(V2AConfig.from_name("tiny")).eval()


@pytest.mark.parametrize("frames", [8, 11, 16])
@torch.no_grad()
def test_velocity_shapes(tiny, frames):
    args = inputs(tiny.config, 3, frames)
    randomise(tiny.final_layer)
    out = tiny.velocity(*args)
    assert out.shape == args[0].shape and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all()) and float(out.abs().max()) > 0


def test_rope_is_2d_over_time_and_band():
    cfg = V2AConfig.from_name("builtin")
    cos, sin = audio_rope_tables(cfg, 16, 5)
    assert cos.shape == (80, cfg.head_dim // 2)
    grid = torch.atan2(sin, cos).reshape(16, 5, -1)
    f_dims, h_dims, _ = cfg.head_dim // 8, 3 * cfg.head_dim // 16, 3 * cfg.head_dim // 16
    assert float(grid[..., :f_dims].abs().max()) == 0  # the frame axis (one frame) stays unrotated
    time_part, band_part = grid[..., f_dims : f_dims + h_dims], grid[..., f_dims + h_dims :]
    assert torch.allclose(time_part[:, 0], time_part[:, 3]) and not torch.allclose(time_part[0], time_part[1])
    assert torch.allclose(band_part[0], band_part[7]) and not torch.allclose(band_part[:, 0], band_part[:, 1])


def test_frame_weights_align_tokens_with_frames():
    cfg = V2AConfig.from_name("builtin")
    w = frame_to_token_weights(cfg, 8)
    assert w.shape == (16, 8) and torch.allclose(w.sum(1), torch.ones(16))
    # 2 tokens per frame: token j's time (in frames) is the weighted frame index, increasing half a frame per token
    times = (w * torch.arange(8.0)).sum(1)
    assert torch.allclose(times[:14].diff(), torch.full((13,), 0.5), atol=1e-5)
    assert float(times[0]) < 0.5 and float(times[-1]) == 7.0  # clamped at the last frame


def test_padded_caption_tokens_change_nothing(tiny):
    z, t, video, feats, mask, keep = inputs(tiny.config)
    randomise(tiny, seed=2)
    padded = torch.cat([feats, 50 * torch.randn(2, 5, feats.shape[2])], 1)
    pmask = torch.cat([mask, torch.zeros(2, 5, dtype=mask.dtype)], 1)
    plain = tiny.velocity(z, t, video, feats, mask, keep)
    assert torch.allclose(plain, tiny.velocity(z, t, video, padded, pmask, keep), atol=1e-5)


@torch.no_grad()
def test_zero_initialised_paths_keep_a_fresh_model_blind_to_video_and_text():
    torch.manual_seed(0)
    model = V2AModel(V2AConfig.from_name("tiny")).eval()
    z, t, video, feats, mask, keep = inputs(model.config)
    randomise(model.final_layer.linear)  # a non-zero output head; everything else as initialised
    out = model.velocity(z, t, video, feats, mask, keep)
    other = model.velocity(z, t, torch.rand_like(video), torch.randn_like(feats), mask, torch.zeros(2))
    assert float(out.abs().max()) > 0 and torch.equal(out, other)  # gates and modulation are zero at init
    model.layers[0].adaLN_modulation[1].weight.normal_(0, 0.2)  # open one block's adaLN: the video now matters
    assert not torch.allclose(model.velocity(z, t, video, feats, mask, keep),
                              model.velocity(z, t, torch.rand_like(video), feats, mask, keep))  # fmt: skip


def test_video_keep_zero_means_no_video(tiny):
    z, t, video, feats, mask, _ = inputs(tiny.config)
    randomise(tiny, seed=3)
    off = torch.zeros(2)
    assert torch.allclose(tiny.velocity(z, t, video, feats, mask, off),
                          tiny.velocity(z, t, torch.rand_like(video), feats, mask, off), atol=1e-6)  # fmt: skip


def test_velocity_names_bad_inputs(tiny):
    z, t, video, feats, mask, keep = inputs(tiny.config)
    with pytest.raises(InputError, match="latent frames"):
        tiny.velocity(z[:, :, :-4], t, video, feats, mask, keep)
    with pytest.raises(InputError, match=r"z must be \[B, 6, T, 10\]"):
        tiny.velocity(z[:, :5], t, video, feats, mask, keep)
    with pytest.raises(InputError, match="32x32"):
        tiny.velocity(z, t, video[..., :16, :16], feats, mask, keep)
    with pytest.raises(InputError, match="frames contains NaN"):
        tiny.velocity(z, t, video.masked_fill(video > 0.99, float("nan")), feats, mask, keep)
    with pytest.raises(InputError, match="unmasked token"):
        tiny.velocity(z, t, video, feats, torch.zeros_like(mask), keep)
    with pytest.raises(ConfigError, match="head_dim"):
        V2AConfig(dim=40, n_heads=2)
    with pytest.raises(ConfigError, match="unknown V2A model size"):
        V2AConfig.from_name("huge")


@pytest.fixture(scope="module")
def untrained_pipeline():
    ds = SoundDataset(SPEC, seed=5)
    codec = AudioCodec.fit(log_mel(torch.stack([c.wave for c in ds.clips("fit", 0, 32)]), SPEC), SPEC, 6, (2, 4))
    torch.manual_seed(0)
    return V2APipeline(V2AModel(V2AConfig.from_name("tiny")), codec, TinyTextEncoder.create(64), frames_range=(4, 12))


def test_generate_audio_contract(untrained_pipeline):
    p = untrained_pipeline
    frames = torch.rand(3, 6, 48, 40)  # any frame size: resized
    wave = p.generate_audio(frames, "a red circle", seed=1, steps=3, progress=False)
    assert wave.shape == (6 * SPEC.sample_rate // SPEC.fps,) and wave.dtype == torch.float32
    assert float(wave.abs().max()) <= 1.0
    assert torch.equal(wave, p.generate_audio(frames, "a red circle", seed=1, steps=3, progress=False))
    assert not torch.equal(wave, p.generate_audio(frames, "a red circle", seed=2, steps=3, progress=False))
    assert torch.equal(wave, p.generate_batch(frames[None], ["a red circle"], seed=1, steps=3, progress=False)[0])
    assert p.frame_size is None and (p.min_frames, p.max_frames) == (4, 12) and isinstance(p.model, V2AModel)


@pytest.mark.parametrize(
    "frames,match",
    [
        (torch.rand(3, 3, 32, 32), "F=3 video frames; this V2A model takes 4 to 12"),
        (torch.rand(3, 13, 32, 32), "F=13"),
        (torch.rand(4, 8, 32, 32), "3 \\(RGB\\) channels"),
        (torch.rand(8, 32, 32), "one clip"),
        (torch.full((3, 8, 32, 32), float("nan")), "NaN"),
        (torch.zeros(3, 8, 32, 32, dtype=torch.uint8), "float"),
    ],
)
def test_generate_audio_names_bad_frames(untrained_pipeline, frames, match):
    with pytest.raises(InputError, match=match):
        untrained_pipeline.generate_audio(frames, progress=False)


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        V2APipeline.from_dir(tmp_path)


# ------------------------------------------------------------------------------------------------
# The shipped model
# ------------------------------------------------------------------------------------------------


def test_builtin_v2a_is_small_and_shipped():
    d = builtin_v2a_dir()
    size = sum(f.stat().st_size for f in d.iterdir())
    assert size <= 10 * 2**20, size
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["frames"] == [8, 16] and cfg["audio"]["fps"] == 8
    setup_py = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    assert '"builtin/v2a/*"' in setup_py  # package data ships the folder


@pytest.fixture(scope="module")
def builtin():
    return V2APipeline.builtin()


def test_builtin_pitch_and_sync_on_held_out_clips(builtin):
    """Six held-out clips (one per held-out colour-shape pair), video only: every pitch class right, >= 80 % of the
    visual bounces with an onset within +-1 frame; the same sounds against the wrong clips' frames do worse."""
    clips = heldout_clips(builtin.spec, 12, 8, seed=7)[:6]
    assert {(c.colour, c.shape) for c in clips} <= set(HELD_OUT_SOUNDS)
    waves = builtin.generate_batch(torch.stack([c.frames for c in clips]), seed=0, progress=False)
    own = summarise([score_clip(w, c.frames, builtin.spec) for w, c in zip(waves, clips)])
    shuffled = summarise([score_clip(waves[i], clips[(i + 1) % 6].frames, builtin.spec) for i in range(6)])
    assert own["pitch_accuracy_pct"] == 100.0, own
    assert own["onset_sync_pct"] >= 80.0, own
    assert shuffled["pitch_accuracy_pct"] <= 50.0 and shuffled["onset_sync_pct"] < own["onset_sync_pct"], shuffled


def test_builtin_follows_the_video_for_sixteen_frames(builtin):
    clip = heldout_clips(builtin.spec, 4, 16, seed=8)[0]
    wave = builtin.generate_audio(clip.frames, seed=3, progress=False)
    assert wave.shape == (32000,)
    row = score_clip(wave, clip.frames, builtin.spec)
    assert row["pitch_ok"] and row["events_synced"] >= row["n_events"] - 1, row


def test_eval_v2a_command_writes_a_report(tmp_path):
    from lumina_rt.cli import main

    out = tmp_path / "report.json"
    assert main(["eval-v2a", "--clips", "3", "--steps", "6", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"generated", "shuffled_video", "reference_sound", "reference_through_codec"}
    assert report["summary"]["reference_sound"]["onset_sync_pct"] == 100.0
    assert len(report["clips"]) == 3


def test_builtin_keeps_the_videos_pitch_when_given_a_held_out_caption(builtin):
    """The caption of a held-out pair is a word combination never seen in training; it must not override the video
    (a first model heard every captioned cyan circle as green)."""
    clips = [c for c in heldout_clips(builtin.spec, 40, 8, seed=9) if (c.colour, c.shape) == ("cyan", "circle")][:4]
    assert len(clips) == 4
    waves = builtin.generate_batch(torch.stack([c.frames for c in clips]), [c.caption for c in clips], progress=False)
    rows = [score_clip(w, c.frames, builtin.spec) for w, c in zip(waves, clips)]
    assert all(r["pitch_ok"] for r in rows), [r["pitch_class"] for r in rows]
