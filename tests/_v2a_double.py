"""A stand-in for `lumina_rt.v2a.pipeline.V2APipeline` (tests only): the contract's interface, a transparent sound.

Each video frame becomes 1/fps s of a 440 Hz tone whose amplitude is the frame's mean brightness, so a test can
tell from the sound which frames the model saw. It records every clip it was given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lumina_rt.errors import InputError


@dataclass(frozen=True)
class Spec:
    sample_rate: int = 16000
    fps: int = 8


class ToneV2A:
    def __init__(self, min_frames: int = 8, max_frames: int = 16, frame_size: tuple[int, int] | None = None):
        self.spec = Spec()
        self.min_frames, self.max_frames = min_frames, max_frames
        self.frame_size = frame_size
        self.calls: list[dict] = []

    def generate_audio(self, frames, prompt=None, *, seed=0, steps=None, guidance=None, progress=True):
        if frames.dim() != 4 or frames.shape[0] != 3:
            raise InputError(f"frames must be [3, F, H, W], got {tuple(frames.shape)}")
        n = frames.shape[1]
        if not self.min_frames <= n <= self.max_frames:
            raise InputError(f"F={n}; this V2A model takes {self.min_frames} to {self.max_frames} frames")
        self.calls.append({"shape": tuple(frames.shape), "prompt": prompt, "seed": seed, "steps": steps})
        per = self.spec.sample_rate // self.spec.fps
        t = torch.arange(n * per) / self.spec.sample_rate
        amplitude = frames.mean(dim=(0, 2, 3)).repeat_interleave(per)
        return (0.9 * amplitude * torch.sin(2 * math.pi * 440 * t)).float()


def brightness_envelope(wave: torch.Tensor, sample_rate: int, fps: float, frames: int) -> torch.Tensor:
    """Peak amplitude of the waveform in each frame's span (what `ToneV2A` encodes)."""
    out = []
    for i in range(frames):
        a, b = int(i * sample_rate / fps), int((i + 1) * sample_rate / fps)
        out.append(wave[a + (b - a) // 4 : b - (b - a) // 4].abs().max())  # the middle half: away from edges
    return torch.stack(out)
