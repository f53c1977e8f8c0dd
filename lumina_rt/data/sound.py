"""Synthetic paired video + sound for Lumina-V2A: what is visible decides what is heard, and when.

The sound design (docs/audio.md):

- the clip is the project's synthetic clip (`lumina_rt.data.synthetic`: source, background, colour, shape),
  except that the object moves fast (4-7 px per frame at 32 px) along one axis, bounces off the frame's edges and
  leaves no motion trail (a trail behind an object that turns around would blur where it turns);
- every bounce strikes a note: 3 ms attack, exponential decay (90 ms), at the instant the object touches the edge;
- the note's pitch is set by the object's colour (six pitches a fourth apart, E4 to F6, `PITCHES`), its timbre by
  the shape (`TIMBRES`: circle pure sine, square odd harmonics, triangle 2nd and 3rd harmonics);
- a quiet hum of the same pitch and timbre sounds while the object is visible (the whole clip), so every clip has
  a pitch, even one without bounces;
- bounces happen only where the frames show them: every bounce lies between video frames 0.75 and F - 1.75
  (a visible turn needs a frame before and after it), and every clip has at least one.

Held-out (`is_held_out_sound`): six (colour, shape) pairs - every colour once, every shape twice - never occur in
training; their pitch + timbre combination is new to the model. Evaluation clips also come from their own seed
stream (backgrounds, sizes, speeds, bounce times differ from training).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from lumina_rt.data import captions as C
from lumina_rt.data.synthetic import REFERENCE_SIZE, SOURCES, random_spec, render_clip
from lumina_rt.errors import ConfigError
from lumina_rt.v2a.codec import AudioSpec

# colour -> note fundamental (Hz): a fourth apart (E4 A4 D5 G5 C6 F6), so no pitch is another's octave
PITCHES: dict[str, float] = {
    "red": 329.63,
    "yellow": 440.0,
    "green": 587.33,
    "cyan": 783.99,
    "blue": 1046.50,
    "magenta": 1396.91,
}
# shape -> amplitudes of harmonics 1, 2, 3, ... (the fundamental is always the strongest partial)
TIMBRES: dict[str, tuple[float, ...]] = {
    "circle": (1.0,),
    "square": (1.0, 0.0, 0.4, 0.0, 0.25),
    "triangle": (1.0, 0.5, 0.3),
}
NOTE_AMPLITUDE, HUM_AMPLITUDE = 0.45, 0.05
ATTACK_S, DECAY_S = 0.003, 0.09
SPEED_RANGE = (4.0, 7.0)  # px per frame at 32 px
RADIUS_RANGE = (3.5, 4.5)
EDGE_MARGIN = 0.5  # px between the object's radius and the frame edge at a bounce
EVENT_MARGIN = (0.75, 1.75)  # bounces lie in [0.75, F - 1.75] video frames
KIND_IDS = {"train": 11, "eval": 12, "fit": 13}

# (colour, shape) pairs whose sound is never heard in training: colour index + shape index divisible by 3
HELD_OUT_SOUNDS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for i, c in enumerate(C.COLOURS) for j, s in enumerate(C.SHAPES) if (i + j) % 3 == 0
)


def is_held_out_sound(colour: str, shape: str) -> bool:
    return (colour, shape) in HELD_OUT_SOUNDS


@dataclass
class SoundClip:
    """One paired clip: frames [3, F, 32, 32] in [0, 1], waveform [F * sr / fps], bounce times (video frames)."""

    frames: torch.Tensor
    wave: torch.Tensor
    events: list[float]
    colour: str
    shape: str
    direction: str  # initial direction of motion
    speed: float  # px per frame at 32 px
    caption: str
    source: str


def bounce_path(start: float, speed: float, sign: int, lo: float, hi: float, times: np.ndarray) -> np.ndarray:
    """Positions at `times` (frames) of a point moving at `speed` between walls lo and hi, starting at `start`
    towards +1 / -1 (`sign`), reflected at the walls."""
    length = hi - lo
    u = (start - lo) + sign * speed * times  # unfolded coordinate
    u = np.mod(u, 2 * length)
    return lo + np.where(u <= length, u, 2 * length - u)


def bounce_times(start: float, speed: float, sign: int, lo: float, hi: float, duration: float) -> list[float]:
    """Times (frames) in [0, duration) at which the point hits a wall."""
    length = hi - lo
    first = ((hi - start) if sign > 0 else (start - lo)) / speed
    out, t = [], first
    while t < duration:
        out.append(float(t))
        t += length / speed
    return out


def tone(freq: float, timbre: tuple[float, ...], t: np.ndarray, phase: float, sample_rate: int) -> np.ndarray:
    """Sum of harmonics (below Nyquist) with amplitudes `timbre`, normalised to peak amplitude ~1."""
    out = np.zeros_like(t)
    for k, amp in enumerate(timbre, start=1):
        if amp and k * freq < sample_rate / 2:
            out += amp * np.sin(2 * math.pi * k * freq * t + k * phase)
    return out / sum(timbre)


def synth_sound(
    colour: str, shape: str, events_s: list[float], duration_s: float, spec: AudioSpec, phase: float = 0.0
) -> torch.Tensor:
    """Waveform [round(duration_s * sr)]: a hum plus one struck note per event time (seconds)."""
    n = int(round(duration_s * spec.sample_rate))
    t = np.arange(n) / spec.sample_rate
    wave = tone(PITCHES[colour], TIMBRES[shape], t, phase, spec.sample_rate)
    env = np.full(n, HUM_AMPLITUDE)
    for te in events_s:
        dt = t - te
        note = np.where(dt < 0, 0.0, np.minimum(dt / ATTACK_S, 1.0) * np.exp(-np.maximum(dt - ATTACK_S, 0) / DECAY_S))
        env = env + NOTE_AMPLITUDE * note
    return torch.from_numpy(wave * env).float()


def _bounce_setup(rng: np.random.Generator, frames: int, radius: float) -> tuple[float, float, float, float]:
    """(speed, first bounce time, lo, hi) such that every bounce in [0, frames) lies in the visible range."""
    lo, hi = radius + EDGE_MARGIN, REFERENCE_SIZE - radius - EDGE_MARGIN
    first_ok, last_ok = EVENT_MARGIN[0], frames - EVENT_MARGIN[1]
    for _ in range(1000):
        speed = float(rng.uniform(*SPEED_RANGE))
        half_period = (hi - lo) / speed
        t1 = float(rng.uniform(first_ok, min(last_ok, half_period)))
        times = np.arange(t1, frames, half_period)
        if len(times) and times[0] >= first_ok and times[-1] <= last_ok:
            return speed, t1, lo, hi
    raise ConfigError(f"no bouncing path with visible bounces fits frames={frames}; use frames >= 4")


def make_sound_clip(
    rng: np.random.Generator,
    spec: AudioSpec,
    colour: str,
    shape: str,
    direction: str,
    source: str,
    frames: int = 8,
    size: int = 32,
) -> SoundClip:
    """A bouncing clip and its sound, drawn from `rng`."""
    base = random_spec(rng, source, colour, shape, direction, "slowly", frames)
    radius = float(rng.uniform(*RADIUS_RANGE))
    speed, t1, lo, hi = _bounce_setup(rng, frames, radius)
    dx, dy = C.DIRECTIONS[direction]
    sign = dx + dy
    start = hi - speed * t1 if sign > 0 else lo + speed * t1
    times = np.arange(frames, dtype=np.float64)
    along = bounce_path(start, speed, sign, lo, hi, times)
    across = float(rng.uniform(radius + 0.75, REFERENCE_SIZE - radius - 0.75))
    rendered = []
    for k in range(frames):  # frame by frame (the path is not a straight line), without motion trails
        x, y = (float(along[k]), across) if dx else (across, float(along[k]))
        frame_spec = dataclasses.replace(base, x0=x, y0=y, radius=radius, noise_seed=(base.noise_seed + k) % 2**31)
        rendered.append(render_clip(frame_spec, 1, size, trail=False))
    video = torch.cat(rendered, dim=1)
    events = bounce_times(start, speed, sign, lo, hi, float(frames))
    wave = synth_sound(
        colour, shape, [e / spec.fps for e in events], frames / spec.fps, spec, float(rng.uniform(0, 2 * math.pi))
    )
    caption = C.video_caption(colour, shape, direction, "quickly", base.background, int(rng.integers(1000)))
    return SoundClip(video, wave, events, colour, shape, direction, speed, caption, source)


class SoundDataset:
    """Deterministic paired clips: `clips(kind, index, n, frames)` is a pure function of (seed, kind, index).

    kind "train" and "fit" (the codec's fitting set) draw from the training (colour, shape) pairs, "eval" from the
    held-out pairs only (`HELD_OUT_SOUNDS`), all directions and sources.
    """

    def __init__(self, spec: AudioSpec, seed: int = 0, sources: tuple[str, ...] = SOURCES):
        self.spec = spec
        self.seed = int(seed)
        self.sources = tuple(sources)
        self.train_pairs = [(c, s) for c in C.COLOURS for s in C.SHAPES if not is_held_out_sound(c, s)]
        self.eval_pairs = list(HELD_OUT_SOUNDS)

    def clip(self, kind: str, index: int, frames: int = 8) -> SoundClip:
        rng = np.random.default_rng([self.seed, KIND_IDS[kind], int(index), int(frames)])
        pairs = self.eval_pairs if kind == "eval" else self.train_pairs
        colour, shape = pairs[int(rng.integers(len(pairs)))]
        direction = list(C.DIRECTIONS)[int(rng.integers(len(C.DIRECTIONS)))]
        source = self.sources[int(rng.integers(len(self.sources)))]
        return make_sound_clip(rng, self.spec, colour, shape, direction, source, frames)

    def clips(self, kind: str, start: int, n: int, frames: int = 8) -> list[SoundClip]:
        return [self.clip(kind, start + i, frames) for i in range(n)]
