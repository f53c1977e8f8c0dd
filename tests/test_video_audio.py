"""MP4 with sound (lumina_rt.video): written, read back, and typed errors that leave nothing half-written."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from lumina_rt.errors import InputError, MediaError
from lumina_rt.files import atomic_path
from lumina_rt.video import (
    audio_length,
    ffmpeg_exe,
    read_audio,
    read_video,
    run_ffmpeg,
    sound_tracks,
    stream_durations,
    write_video,
)


def chord(samples: int, sample_rate: int, seed: int) -> torch.Tensor:
    """Three random tones under a random envelope: a waveform AAC keeps well (correlation ~0.99+)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / sample_rate
    freqs = 200 + 1800 * torch.rand(3, generator=g, dtype=torch.float64)
    wave = sum(torch.sin(2 * math.pi * f * t + 6 * torch.rand(1, generator=g).item()) for f in freqs)
    envelope = 0.3 + 0.7 * torch.rand(1, generator=g).item() * (1 + torch.sin(2 * math.pi * 1.5 * t)) / 2
    return (0.25 * wave * envelope).float()


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    n = min(a.numel(), b.numel())
    return float(np.corrcoef(a[:n].double().numpy(), b[:n].double().numpy())[0, 1])


def only(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "frames, fps, sample_rate, audio_frames",
    [
        (8, 8, 16000, 8),  # the built-in's clip: 1 s
        (16, 8, 16000, 12),  # audio shorter than the video: padded with silence
        (9, 24, 22050, 11),  # audio longer: trimmed; 24 fps
        (1, 8, 16000, 1),  # one frame
        (10, 7.5, 44100, 10),  # fractional frame rate
    ],
)
def test_mp4_with_audio_reads_back_with_equal_stream_durations(tmp_path, frames, fps, sample_rate, audio_frames):
    video = torch.rand(3, frames, 16, 24)
    audio = chord(audio_length(audio_frames, fps, sample_rate), sample_rate, seed=frames)
    path = write_video(video, tmp_path / "v.mp4", fps=fps, scale=2, audio=audio, sample_rate=sample_rate)
    assert only(tmp_path) == ["v.mp4"]  # no temporary left behind
    assert sound_tracks(path) == 1

    back, back_fps = read_video(path)
    assert back.shape == (3, frames, 32, 48) and back_fps == pytest.approx(fps)
    assert (back - video.repeat_interleave(2, -1).repeat_interleave(2, -2)).abs().mean() < 0.15  # lossy H.264

    durations = stream_durations(path)
    assert durations["video"] == pytest.approx(frames / fps)
    assert abs(durations["audio"] - durations["video"]) <= 1 / fps  # the bar: within one frame
    waveform, rate = read_audio(path)
    assert rate == sample_rate
    assert waveform.numel() == audio_length(frames, fps, sample_rate)  # measured: exact (MP4 edit list)
    muxed = torch.cat([audio, torch.zeros(max(0, waveform.numel() - audio.numel()))])[: waveform.numel()]
    assert waveform.abs().max() > 0.1  # not silent
    assert corr(waveform, muxed) > 0.98, corr(waveform, muxed)
    if audio.numel() < waveform.numel():  # the padding is silence
        assert waveform[audio.numel() + 2048 :].abs().max() < 0.02


def test_one_sound_track_per_clip_of_a_batch(tmp_path):
    video = torch.rand(2, 3, 8, 16, 16)  # two clips side by side
    audio = torch.stack([chord(16000, 16000, 1), chord(16000, 16000, 2)])
    path = write_video(video, tmp_path / "b.mp4", fps=8, audio=audio, sample_rate=16000)
    assert sound_tracks(path) == 2
    for i in range(2):
        track, rate = read_audio(path, track=i)
        assert rate == 16000 and corr(track, audio[i]) > 0.98 and corr(track, audio[1 - i]) < 0.5
    with pytest.raises(InputError, match="no track 2"):
        read_audio(path, track=2)


def test_audio_needs_an_mp4_and_leaves_nothing_on_bad_input(tmp_path):
    video, audio = torch.rand(3, 4, 8, 8), chord(8000, 16000, 0)
    cases = [
        (tmp_path / "v.gif", dict(audio=audio, sample_rate=16000), "v.gif.*cannot hold sound"),
        (tmp_path / "v.mp4", dict(audio=audio, sample_rate=None), "sample_rate"),
        (tmp_path / "v.mp4", dict(audio=audio, sample_rate=12345), "12345 Hz.*AAC"),
        (tmp_path / "v.mp4", dict(audio=audio * float("nan"), sample_rate=16000), "NaN"),
        (tmp_path / "v.mp4", dict(audio=torch.zeros(2, 3, 4), sample_rate=16000), r"\(2, 3, 4\)"),
        (tmp_path / "v.mp4", dict(fps=0, audio=audio, sample_rate=16000), "fps"),
        (tmp_path / "v.avi", {}, "v.avi"),
    ]
    for path, kwargs, match in cases:
        with pytest.raises(InputError, match=match):
            write_video(video, path, **kwargs)
    assert only(tmp_path) == []


def test_a_failed_encode_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    import lumina_rt.video as video_module

    target = tmp_path / "v.mp4"
    target.write_bytes(b"old")

    def fail(arr, fps, out, tracks=None, sample_rate=None):
        out.write_bytes(b"partial")
        run_ffmpeg(["-f", "nonexistent-format", "-i", "x", str(out)], "encode")  # a real ffmpeg failure

    monkeypatch.setattr(video_module, "encode_mp4", fail)
    with pytest.raises(MediaError, match="ffmpeg could not encode"):
        write_video(torch.rand(3, 2, 8, 8), target, audio=chord(2000, 16000, 0), sample_rate=16000)
    assert target.read_bytes() == b"old" and only(tmp_path) == ["v.mp4"]


def test_read_video_round_trips_mp4_and_gif(tmp_path):
    video = torch.rand(3, 5, 8, 12)
    for name, fps in (("v.mp4", 12), ("v.gif", 10)):
        back, back_fps = read_video(write_video(video, tmp_path / name, fps=fps))
        assert back.shape == (3, 5, 8, 12) and back.dtype == torch.float32
        assert back_fps == pytest.approx(fps) and 0 <= back.min() and back.max() <= 1
    gif, _ = read_video(tmp_path / "v.gif")
    assert (gif - video).abs().max() < 0.2  # GIF palette quantisation


def test_read_video_typed_errors_name_the_file(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    sound_only = tmp_path / "sound.mp4"
    run_ffmpeg(["-y", "-f", "lavfi", "-i", "sine=duration=0.5", "-c:a", "aac", str(sound_only)], "write a test file")
    long = write_video(torch.rand(3, 20, 8, 8), tmp_path / "long.mp4", fps=8)
    for path, match in (
        (tmp_path / "missing.mp4", "'.*missing.mp4' does not exist"),
        (tmp_path, "is not a file"),
        (junk, "junk.mp4' is not a readable video"),
        (empty, "empty.mp4' is not a readable video"),
        (sound_only, "sound.mp4' has no video stream"),
    ):
        with pytest.raises(InputError, match=match):
            read_video(path)
    with pytest.raises(InputError, match=r"long.mp4' is longer than 2 s \(at 8 fps, more than 16 frames\)"):
        read_video(long, max_seconds=2)
    assert read_video(long, max_seconds=2.5)[0].shape[1] == 20
    with pytest.raises(InputError, match=r"long.mp4' is too large: 11 frames of 8x8 .* 0.0007 M pixels .*: say so"):
        read_video(long, max_pixels=700, accepts="say so")
    with pytest.raises(InputError, match="junk.mp4' is not a readable media file"):
        read_audio(junk)
    with pytest.raises(InputError, match="long.mp4' has 0 sound track"):
        read_audio(long)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_read_video_names_an_unreadable_file(tmp_path):
    path = write_video(torch.rand(3, 2, 8, 8), tmp_path / "locked.mp4")
    path.chmod(0)
    with pytest.raises(InputError, match="locked.mp4' cannot be read"):
        read_video(path)


def test_atomic_path_keep_suffix_names_the_temporary_like_the_target(tmp_path):
    with atomic_path(tmp_path / "v.mp4", keep_suffix=True) as tmp:
        assert tmp.name.startswith(".v.mp4.") and tmp.name.endswith(".tmp.mp4")
        run_ffmpeg(["-y", "-f", "lavfi", "-i", "testsrc=duration=0.25:size=16x16:rate=8", str(tmp)], "encode")
    assert only(tmp_path) == ["v.mp4"] and read_video(tmp_path / "v.mp4")[0].shape[1] == 2
    assert ffmpeg_exe()


# ------------------------------------------------------------------------------------------------ the audio stage
# The stage's resampling is checked with a transparent stand-in model (tests/_v2a_double.py: its sound shows which
# frames it saw); everything else with the real V2A pipeline on a small random checkpoint.


def test_soundtrack_resamples_the_clip_to_the_models_rate_and_fits_the_sound_to_the_clip():
    from lumina_rt.v2a.soundtrack import Soundtrack
    from tests._v2a_double import ToneV2A, brightness_envelope

    v2a = ToneV2A()
    stage = Soundtrack(v2a, steps=5)
    levels = torch.linspace(0.1, 1.0, 30)  # 30 frames at 24 fps: 1.25 s -> 10 model frames at 8 fps
    clip = levels[None, :, None, None].expand(3, 30, 6, 10).contiguous()
    wave = stage(clip, 24, "a prompt", seed=3, progress=False)
    assert v2a.calls == [{"shape": (3, 10, 6, 10), "prompt": "a prompt", "seed": 3, "steps": 5}]
    assert wave.shape == (audio_length(30, 24, 16000),) == (20000,)
    envelope = brightness_envelope(wave, 16000, 8, 10)
    assert torch.allclose(envelope, 0.9 * levels[::3], atol=0.01)  # model frame j shows source frame 3j

    stage = Soundtrack(ToneV2A(frame_size=(16, 16)))
    assert stage.conform(torch.rand(3, 9, 8, 12), 8).shape == (3, 9, 16, 16)
    odd = stage(torch.rand(3, 9, 8, 8), 7.5, progress=False)  # 1.2 s -> ceil(9.6) = 10 model frames, trimmed
    assert odd.shape == (audio_length(9, 7.5, 16000),) == (19200,)


@pytest.fixture(scope="module")
def real_stage():
    from lumina_rt.v2a.pipeline import V2APipeline
    from lumina_rt.v2a.soundtrack import Soundtrack
    from tests._v2a_checkpoint import tiny_v2a_dir

    return Soundtrack(V2APipeline.from_dir(tiny_v2a_dir()), steps=3)


@pytest.mark.parametrize(
    "frames, fps, match",
    [
        (7, 8, r"lasts 0.875 s \(7 frames at 8 fps\), shorter than .* accepts 8 to 16 frames at 8 fps \(1 to 2 s"),
        (17, 8, r"lasts 2.12 s \(17 frames at 8 fps\), longer than .* accepts 8 to 16 frames at 8 fps"),
        (20, 24, r"shorter"),
        (49, 24, r"longer"),
    ],
)
def test_soundtrack_names_a_clip_it_cannot_serve(real_stage, monkeypatch, frames, fps, match):
    calls = []
    monkeypatch.setattr(real_stage.v2a, "generate_audio", lambda *a, **k: calls.append(a))
    with pytest.raises(InputError, match=match):
        real_stage(torch.rand(3, frames, 8, 8), fps, progress=False)
    assert calls == []  # refused before the model runs
    assert real_stage.check(48, 24) == 16 and real_stage.check(24, 24) == 8


def test_pipeline_audio_stage_result_saves_an_mp4_with_sound(real_stage, tmp_path):
    from lumina_rt.builtin import builtin_dir
    from lumina_rt.errors import ConfigError
    from lumina_rt.pipeline import Pipeline

    pipe = Pipeline.from_checkpoint(builtin_dir())
    prompts = ["a red circle moving right", "a blue square moving up"]
    kwargs = dict(frames=8, height=32, width=32, steps=3, schedule="2x2", progress=False)
    result = pipe.generate(prompts, audio=real_stage, seed=4, **kwargs)
    assert result.audio.shape == (2, 16000) and result.sample_rate == 16000 and result.fps == 8
    for clip, prompt, wave in zip(result.frames, prompts, result.audio):  # each clip's own sound, in order
        assert torch.equal(wave, real_stage(clip, 8, prompt, seed=4, progress=False))

    path = result.save(tmp_path / "v.mp4")
    assert sound_tracks(path) == 2
    durations = stream_durations(path)
    assert abs(durations["audio"] - durations["video"]) <= 1 / 8 and durations["video"] == 1.0
    for i in range(2):  # track i is clip i's
        assert corr(read_audio(path, track=i)[0], result.audio[i]) > 0.98
    with pytest.raises(InputError, match="v.gif.*cannot hold sound"):
        result.save(tmp_path / "v.gif")
    with pytest.raises(InputError, match="made for 8 fps; saving .* at 24 fps"):
        result.save(tmp_path / "w.mp4", fps=24)
    result.save(tmp_path / "v.gif", audio=False)
    assert only(tmp_path) == ["v.gif", "v.mp4"]

    with pytest.raises(InputError, match="shorter than the sound model serves"):  # refused before sampling
        pipe.generate("a red circle", audio=real_stage, **{**kwargs, "frames": 1})
    with pytest.raises(ConfigError, match="has no sound model"):
        pipe.generate("a red circle", audio=True, **kwargs)
