"""Audio front end and back end (lumina_rt.v2a.codec): mel filterbank, STFT framing, PCA codec, Griffin-Lim vocoder."""

import math

import pytest
import torch

from lumina_rt.data.sound import PITCHES, SoundDataset, synth_sound
from lumina_rt.errors import ConfigError, InputError
from lumina_rt.v2a.codec import (
    AudioCodec,
    AudioSpec,
    log_mel,
    mel_centres,
    mel_filterbank,
    mel_spectrogram,
    mel_to_linear,
    mel_to_waveform,
    stft,
)
from lumina_rt.v2a.eval import dominant_frequency, pitch_class

SPEC = AudioSpec()


def sine(freq: float, seconds: float = 1.0, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(SPEC.sample_rate * seconds), dtype=torch.float64) / SPEC.sample_rate
    return (amp * torch.sin(2 * math.pi * freq * t)).float()


def test_spec_ties_audio_frames_to_video_frames():
    assert SPEC.samples(8) == 16000 and SPEC.mel_frames(8) == 64
    assert mel_spectrogram(sine(440.0), SPEC).shape == (SPEC.n_mels, 64)
    with pytest.raises(ConfigError, match="hop"):
        AudioSpec(hop=256)
    with pytest.raises(ConfigError, match="n_mels"):
        AudioSpec(n_mels=0)
    with pytest.raises(InputError, match="multiple of the hop"):
        mel_spectrogram(torch.zeros(1001), SPEC)


def test_filterbank_triangles_peak_at_their_centres():
    fb = mel_filterbank(SPEC)
    assert fb.shape == (SPEC.n_mels, SPEC.n_fft // 2 + 1)
    assert float(fb.min()) >= 0 and float(fb.max()) <= 1.0 + 1e-6
    bin_hz = SPEC.sample_rate / SPEC.n_fft
    peaks = fb.argmax(1).float() * bin_hz
    assert torch.allclose(peaks, mel_centres(SPEC), atol=bin_hz)  # each filter peaks at its centre frequency
    assert bool((mel_centres(SPEC).diff() > 0).all())


@pytest.mark.parametrize("freq", [330.0, 1000.0, 3100.0])
def test_a_sine_lands_in_the_band_nearest_its_frequency(freq):
    mel = mel_spectrogram(sine(freq), SPEC).mean(1)
    centres = mel_centres(SPEC)
    assert int(mel.argmax()) == int((centres - freq).abs().argmin())


def test_stft_istft_round_trip_and_frame_centres():
    wave = sine(523.0) + 0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(0))
    s = torch.stft(wave, SPEC.n_fft, SPEC.hop, window=torch.hann_window(SPEC.n_fft), return_complex=True)
    back = torch.istft(s, SPEC.n_fft, SPEC.hop, window=torch.hann_window(SPEC.n_fft), length=16000)
    assert float((back - wave).abs().max()) < 1e-5
    # a click at sample n shows up loudest in frame n / hop (frames centred on j * hop)
    click = torch.zeros(16000)
    click[5000] = 1.0
    assert int(stft(click, SPEC).abs().sum(0).argmax()) == 5000 // SPEC.hop


def test_mel_to_linear_keeps_tonal_peaks():
    mag = stft(sine(784.0), SPEC).abs()
    lin = mel_to_linear(mel_spectrogram(sine(784.0), SPEC), SPEC)
    bin_hz = SPEC.sample_rate / SPEC.n_fft
    assert abs(float(lin.mean(1).argmax()) - float(mag.mean(1).argmax())) * bin_hz <= 60.0


@pytest.mark.parametrize("colour,shape", [("red", "square"), ("cyan", "triangle"), ("magenta", "circle")])
def test_vocoder_quality(colour, shape):
    """Griffin-Lim from the mel alone: the mel of the result is within 15 % of the original (spectral convergence,
    measured 9-12 %), the onsets stay where they were and the pitch class survives."""
    wave = synth_sound(colour, shape, [0.3, 0.7], 1.0, SPEC)
    mel = mel_spectrogram(wave, SPEC)
    out = mel_to_waveform(mel, SPEC)
    assert out.shape == wave.shape and out.dtype == torch.float32 and float(out.abs().max()) <= 1.0
    rebuilt = mel_spectrogram(out, SPEC)
    convergence = float((rebuilt - mel).norm() / mel.norm())
    assert convergence < 0.15, convergence
    loud = rebuilt.sum(0)
    assert loud[int(0.3 * 64) + 1] > 3 * loud[int(0.3 * 64) - 3]  # the note at 0.3 s starts at 0.3 s
    assert pitch_class(dominant_frequency(out, SPEC)) == colour
    assert abs(dominant_frequency(out, SPEC) - PITCHES[colour]) / PITCHES[colour] < 0.06


@pytest.fixture(scope="module")
def codec_and_data():
    ds = SoundDataset(SPEC, seed=3)
    fit = log_mel(torch.stack([c.wave for c in ds.clips("fit", 0, 128, 8)]), SPEC)
    test = log_mel(torch.stack([c.wave for c in ds.clips("eval", 0, 16, 8)]), SPEC)
    return AudioCodec.fit(fit, SPEC, 6, (2, 4)), test


def test_codec_round_trip_on_unseen_sounds(codec_and_data):
    codec, test = codec_and_data
    z = codec.encode(test)
    assert z.shape == (16, 6, 32, 10)
    assert abs(float(z.mean())) < 0.3 and 0.6 < float(z.std()) < 1.5  # whitened
    err = float((codec.decode(z) - test).pow(2).mean().sqrt() / test.std())
    assert err < 0.06, err  # 6 of 8 block components of held-out sounds: ~3 % relative error
    full = AudioCodec.fit(test, SPEC, 8, (2, 4))  # all components: lossless
    assert torch.allclose(full.decode(full.encode(test)), test, atol=1e-3)


def test_codec_save_load_and_errors(codec_and_data, tmp_path):
    codec, test = codec_and_data
    codec.save(tmp_path)
    back = AudioCodec.load(tmp_path, SPEC)
    assert torch.equal(back.encode(test), codec.encode(test))
    with pytest.raises(InputError, match=r"latents must be \[B, 6, T, 10\]"):
        codec.decode(torch.zeros(1, 5, 8, 10))
    with pytest.raises(InputError, match="log-mel must be"):
        codec.encode(torch.zeros(1, 39, 64))
    with pytest.raises(ConfigError, match="exceeds the block"):
        AudioCodec.fit(test, SPEC, 9, (2, 4))


# ------------------------------------------------------------------------------------------------
# The paired data (lumina_rt.data.sound)
# ------------------------------------------------------------------------------------------------


def test_held_out_pairs_cover_every_colour_once_and_never_reach_training():
    from lumina_rt.data.captions import COLOURS, SHAPES
    from lumina_rt.data.sound import HELD_OUT_SOUNDS, is_held_out_sound

    assert len(HELD_OUT_SOUNDS) == 6 and sorted(c for c, _ in HELD_OUT_SOUNDS) == sorted(COLOURS)
    assert all(sum(s == shape for _, s in HELD_OUT_SOUNDS) == 2 for shape in SHAPES)
    ds = SoundDataset(SPEC)
    assert not any(is_held_out_sound(c.colour, c.shape) for c in ds.clips("train", 0, 120))
    assert all(is_held_out_sound(c.colour, c.shape) for c in ds.clips("eval", 0, 30))


@pytest.mark.parametrize("frames", [8, 16])
def test_bounces_are_visible_and_heard_at_their_time(frames):
    from lumina_rt.data.sound import EVENT_MARGIN
    from lumina_rt.v2a.eval import audio_onsets, visual_events

    clips = SoundDataset(SPEC, seed=4).clips("train", 0, 24, frames)
    for c in clips:
        assert c.frames.shape == (3, frames, 32, 32) and c.wave.shape == (SPEC.samples(frames),)
        assert c.events and all(EVENT_MARGIN[0] <= e <= frames - EVENT_MARGIN[1] for e in c.events)
        turns = visual_events(c.frames)  # measured from the frames
        assert len(turns) == len(c.events) and all(abs(t - e) <= 0.5 for t, e in zip(turns, c.events))
        onsets = audio_onsets(c.wave, SPEC)  # measured from the sound
        assert len(onsets) == len(c.events) and all(abs(o - e) <= 0.25 for o, e in zip(onsets, c.events))
        assert pitch_class(dominant_frequency(c.wave, SPEC)) == c.colour
