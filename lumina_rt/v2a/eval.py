"""V2A evaluator: is the generated sound in sync with what the frames show, and at the right pitch?

Per held-out clip (`lumina_rt.data.sound`: (colour, shape) pairs never heard in training):

- visual events come FROM THE FRAMES (`visual_events`): the object's centroid track (`lumina_rt.data.motion`)
  turns around (a bounce) at frame k when its displacement along the axis of motion changes sign;
- audio onsets come from the generated waveform (`audio_onsets`): peaks of the spectral flux of its log-mel;
- a visual event is in sync when an onset lies within +-1 video frame of it (`ONSET_TOLERANCE`); onset precision
  is the share of onsets within +-1 frame of some visual event;
- pitch class: the dominant frequency of the waveform's spectrum (`dominant_frequency`), nearest in log-frequency to
  the six note pitches, against the colour measured from the frames (`analyse_frames`).

`evaluate_v2a` reports, side by side: the generated sound, the shuffled-video control (the sound generated for clip i
scored against clip i+1's frames: chance level for this data), and two references (the synthetic ground-truth
sound, and that sound through the audio codec and Griffin-Lim vocoder: what the model's output path can reach).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lumina_rt.data.motion import analyse_frames
from lumina_rt.data.sound import PITCHES, SoundClip, SoundDataset
from lumina_rt.v2a.codec import AudioSpec, mel_spectrogram

logger = logging.getLogger(__name__)

ONSET_TOLERANCE = 1.0  # video frames
MIN_TURN = 1.0  # px (at 32 px): a turn moves at least this far on one side (the other may be a near-standstill)
PLATEAU = 0.25  # px: a step this small between two frames at a turn means the turn lies halfway between them
FLUX_FLOOR = 1e-2  # log-mel floor for the onset strength (ignores changes far below the notes)
FLUX_MIN, FLUX_REL = 3.0, 0.3  # an onset's flux must exceed FLUX_MIN and FLUX_REL x the clip's largest
EDGE_FRAMES = 3  # mel frames at each end of a clip where no onset is reported (the centred STFT sees padding there)
PITCH_BAND = (250.0, 1800.0)  # Hz searched for the dominant frequency (the notes' fundamentals lie inside)


def visual_events(frames: torch.Tensor) -> list[float]:
    """Frame indices where the object turns around, measured from frames [3, F, H, W] in [0, 1].

    The axis of motion is the one with the larger centroid spread; a turn at frame k (1 <= k <= F - 2) is a sign
    change of the displacement along it, one side moving at least MIN_TURN px; when frames k and k + 1 are (almost)
    equally far from the edge, the turn is at k + 0.5.
    """
    a = analyse_frames(frames)
    cents = a.centroids
    if not a.present or sum(c is not None for c in cents) < 3:
        return []
    xs = [c[0] if c is not None else math.nan for c in cents]
    ys = [c[1] if c is not None else math.nan for c in cents]
    axis = xs if np.nanstd(xs) >= np.nanstd(ys) else ys
    steps = [b - a for a, b in zip(axis[:-1], axis[1:])]  # steps[k]: frame k -> k + 1
    out: list[float] = []
    k = 1
    while k < len(axis) - 1:
        before, after, where = steps[k - 1], steps[k], float(k)
        if abs(after) < PLATEAU and k + 1 < len(steps):  # frames k, k+1 equally far from the edge: turn between
            after, where = steps[k + 1], k + 0.5
        ok = not (math.isnan(before) or math.isnan(after)) and abs(before) >= PLATEAU
        if ok and before * after < 0 and max(abs(before), abs(after)) >= MIN_TURN:
            out.append(where)
        k += 2 if where != k else 1
    return out


def onset_strength(wave: torch.Tensor, spec: AudioSpec) -> torch.Tensor:
    """Spectral flux [T] (T mel frames): summed positive increase of log(mel + FLUX_FLOOR) from frame j-1 to j."""
    lm = torch.log(mel_spectrogram(wave.float(), spec) + FLUX_FLOOR)
    flux = torch.relu(lm[:, 1:] - lm[:, :-1]).sum(0)
    return torch.cat([torch.zeros(1), flux])


def audio_onsets(wave: torch.Tensor, spec: AudioSpec) -> list[float]:
    """Onset times in video frames (mel frame j at j / mel_frames_per_video_frame) of a waveform [samples]."""
    flux = onset_strength(wave, spec)
    if len(flux) < 3:
        return []
    threshold = max(FLUX_MIN, FLUX_REL * float(flux.max()))
    radius = spec.mel_frames_per_video_frame // 2  # a peak is the largest within +- half a video frame
    out = []
    for j in range(EDGE_FRAMES, len(flux) - EDGE_FRAMES):  # the STFT's first / last frames see padding
        lo, hi = max(0, j - radius), min(len(flux), j + radius + 1)
        if flux[j] >= threshold and flux[j] == flux[lo:hi].max():
            out.append(j / spec.mel_frames_per_video_frame)
    return out


def dominant_frequency(wave: torch.Tensor, spec: AudioSpec) -> float:
    """Frequency (Hz) of the largest peak in PITCH_BAND of the clip's mean magnitude spectrum (4096-point STFT)."""
    n_fft = 4096
    wave = wave.float()
    if wave.numel() < n_fft:
        wave = torch.nn.functional.pad(wave, (0, n_fft - wave.numel()))
    mag = torch.stft(wave, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True).abs().mean(-1)
    freqs = torch.arange(mag.numel()) * spec.sample_rate / n_fft
    band = (freqs >= PITCH_BAND[0]) & (freqs <= PITCH_BAND[1])
    return float(freqs[band][mag[band].argmax()])


def pitch_class(freq: float) -> str:
    """The colour whose note pitch is nearest to `freq` in log frequency."""
    return min(PITCHES, key=lambda c: abs(math.log(freq / PITCHES[c])))


def score_clip(wave: torch.Tensor, frames: torch.Tensor, spec: AudioSpec) -> dict[str, Any]:
    """Sync and pitch of one waveform against one clip's frames (everything measured, nothing from the generator)."""
    events = visual_events(frames)
    onsets = audio_onsets(wave, spec)
    colour = analyse_frames(frames).colour
    freq = dominant_frequency(wave, spec)
    synced = [any(abs(o - e) <= ONSET_TOLERANCE for o in onsets) for e in events]
    precise = [any(abs(o - e) <= ONSET_TOLERANCE for e in events) for o in onsets]
    return dict(
        events=events, onsets=[round(o, 3) for o in onsets], events_synced=sum(synced), n_events=len(events),
        onsets_matched=sum(precise), n_onsets=len(onsets), colour=colour, frequency=round(freq, 1),
        pitch_class=pitch_class(freq), pitch_ok=pitch_class(freq) == colour,
    )  # fmt: skip


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Onset recall (% of visual events with an onset within +-1 frame), onset precision, pitch-class accuracy."""
    n_events = sum(r["n_events"] for r in rows)
    n_onsets = sum(r["n_onsets"] for r in rows)
    return dict(
        clips=len(rows),
        visual_events=n_events,
        onsets=n_onsets,
        onset_sync_pct=round(100.0 * sum(r["events_synced"] for r in rows) / max(1, n_events), 2),
        onset_precision_pct=round(100.0 * sum(r["onsets_matched"] for r in rows) / max(1, n_onsets), 2),
        pitch_accuracy_pct=round(100.0 * sum(r["pitch_ok"] for r in rows) / max(1, len(rows)), 2),
    )


def heldout_clips(spec: AudioSpec, n: int, frames: int = 8, seed: int = 0) -> list[SoundClip]:
    """`n` evaluation clips of held-out (colour, shape) pairs."""
    return SoundDataset(spec, seed=seed).clips("eval", 0, n, frames)


def evaluate_v2a(
    pipeline: Any,
    n_clips: int = 48,
    frames: int = 8,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    use_captions: bool = False,
    batch: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate sound for `n_clips` held-out clips with a V2APipeline and score it, next to the shuffled-video
    control and the references. `use_captions`: pass each clip's caption as the prompt (default: video only)."""
    spec: AudioSpec = pipeline.spec
    clips = heldout_clips(spec, n_clips, frames, seed)
    t0 = time.time()
    waves = []
    for i in tqdm(range(0, n_clips, batch), desc="v2a eval", unit="batch", disable=not progress):
        part = clips[i : i + batch]
        prompts = [c.caption for c in part] if use_captions else None
        x = torch.stack([c.frames for c in part])
        waves.append(pipeline.generate_batch(x, prompts, seed=seed + i, steps=steps, guidance=guidance, progress=False))
    generated = torch.cat(waves)
    seconds = time.time() - t0
    reference = torch.stack([c.wave for c in clips])
    through_codec = pipeline.codec.decode_wave(pipeline.codec.encode_wave(reference))
    rows = {
        "generated": [score_clip(w, c.frames, spec) for w, c in zip(generated, clips)],
        "shuffled_video": [score_clip(generated[i], clips[(i + 1) % n_clips].frames, spec) for i in range(n_clips)],
        "reference_sound": [score_clip(w, c.frames, spec) for w, c in zip(reference, clips)],
        "reference_through_codec": [score_clip(w, c.frames, spec) for w, c in zip(through_codec, clips)],
    }
    # agreement of the frame-measured events with the generator's bounce annotations (a check of visual_events)
    annotated = sum(len(c.events) for c in clips)
    found = sum(
        sum(any(abs(e - a) <= 0.5 for e in visual_events(c.frames)) for a in c.events) for c in clips
    )  # fmt: skip
    return dict(
        settings=dict(
            n_clips=n_clips,
            frames=frames,
            seed=seed,
            steps=steps or pipeline.sampling.steps,
            guidance=pipeline.sampling.guidance if guidance is None else guidance,
            use_captions=use_captions,
            tolerance_frames=ONSET_TOLERANCE,
        ),  # fmt: skip
        summary={k: summarise(v) for k, v in rows.items()},
        annotated_bounces_found_in_frames_pct=round(100.0 * found / max(1, annotated), 2),
        generation_seconds=round(seconds, 1),
        clips=[
            dict(
                colour=c.colour,
                shape=c.shape,
                direction=c.direction,
                bounces=[round(e, 2) for e in c.events],
                generated=rows["generated"][i],
            )
            for i, c in enumerate(clips)
        ],  # fmt: skip
    )
