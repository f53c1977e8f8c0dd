"""The audio stage: sound for decoded clips at any frame rate, by a V2A model (after decode, before the file).

`Soundtrack(v2a)` wraps anything with the `V2APipeline` interface of `lumina_rt.v2a.pipeline` (`spec.fps`,
`spec.sample_rate`, `min_frames`, `max_frames`, `frame_size`, `generate_audio(frames, prompt, seed=, steps=,
progress=)`) and does what a clip needs before and after it:

- check the clip's duration against what the model serves (frame count range at the model's frame rate), with an
  error that names the clip, its length and what is accepted;
- resample the clip to the model's frame rate (each model frame takes the source frame showing at its time) and,
  where the model asks for one size (`frame_size`), resize it; the model resizes any other size itself;
- generate, then fit the waveform to the clip's own duration (frames / fps) for muxing.

`lumina_rt.pipeline.Pipeline.generate(..., audio=stage)` and the `lumina-rt generate --audio` / `lumina-rt v2a`
commands call it; neither knows how the sound is made.
"""

from __future__ import annotations

import logging
import math
import os
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F

from lumina_rt.errors import InputError, MediaError
from lumina_rt.video import audio_length, fit_audio, frame_rate

logger = logging.getLogger(__name__)


class Soundtrack:
    """A V2A pipeline as the audio stage of generation: clips at any frame rate in, waveforms of their duration out."""

    def __init__(self, v2a: Any, steps: int | None = None, guidance: float | None = None):
        self.v2a = v2a
        self.steps = steps
        self.guidance = guidance

    @classmethod
    def builtin(cls, steps: int | None = None) -> Soundtrack:
        """The shipped V2A model (`lumina_rt.v2a.pipeline.V2APipeline.builtin()`), reference torch model."""
        from lumina_rt.v2a.pipeline import V2APipeline

        return cls(V2APipeline.builtin(), steps=steps)

    # ------------------------------------------------------------------ what the model serves
    @property
    def sample_rate(self) -> int:
        return int(self.v2a.spec.sample_rate)

    @property
    def fps(self) -> int:
        """The frame rate the model was trained for."""
        return int(self.v2a.spec.fps)

    @property
    def min_frames(self) -> int:
        return int(self.v2a.min_frames)

    @property
    def max_frames(self) -> int:
        return int(self.v2a.max_frames)

    @property
    def max_seconds(self) -> float:
        """The longest clip it serves, in seconds."""
        return self.max_frames / self.fps

    def accepts(self) -> str:
        """What it serves, in words: '8 to 16 frames at 8 fps (1 to 2 s; other frame rates are resampled)'."""
        return (
            f"{self.min_frames} to {self.max_frames} frames at {self.fps} fps ({self.min_frames / self.fps:g} to "
            f"{self.max_seconds:g} s; other frame rates are resampled)"
        )

    def model_frames(self, frames: int, fps: float) -> int:
        """Frames at the model's rate that cover `frames` frames at `fps` (the sound is then trimmed to fit)."""
        return math.ceil(Fraction(int(frames)) * self.fps / frame_rate(fps))

    def check(self, frames: int, fps: float, what: str = "the clip") -> int:
        """The model frame count of a clip; InputError naming it, its length and what is accepted when the model
        does not serve it."""
        n = self.model_frames(frames, fps)
        seconds = frames / float(frame_rate(fps))
        if n < self.min_frames:
            raise InputError(
                f"{what} lasts {seconds:.3g} s ({frames} frames at {float(fps):g} fps), shorter than the sound model "
                f"serves: it accepts {self.accepts()}"
            )
        if n > self.max_frames:
            raise InputError(
                f"{what} lasts {seconds:.3g} s ({frames} frames at {float(fps):g} fps), longer than the sound model "
                f"serves: it accepts {self.accepts()}"
            )
        return n

    # ------------------------------------------------------------------ one clip
    def conform(self, frames: torch.Tensor, fps: float, what: str = "the clip") -> torch.Tensor:
        """A clip [3, F, H, W] at `fps` as the model takes it: at its frame rate (and size, if it asks for one)."""
        if frames.dim() != 4 or frames.shape[0] not in (1, 3):
            raise InputError(f"{what} must be frames [3, F, H, W], got shape {tuple(frames.shape)}")
        if frames.shape[0] == 1:
            frames = frames.expand(3, -1, -1, -1)
        count = int(frames.shape[1])
        n = self.check(count, fps, what)
        rate = frame_rate(fps)
        index = torch.tensor([min(count - 1, math.floor(Fraction(j) * rate / self.fps)) for j in range(n)])
        clip = frames.index_select(1, index).float()
        size = getattr(self.v2a, "frame_size", None)
        if size is not None and tuple(clip.shape[2:]) != tuple(size):
            clip = F.interpolate(
                clip.transpose(0, 1), size=tuple(size), mode="bilinear", antialias=True, align_corners=False
            ).transpose(0, 1)
        return clip.contiguous()

    def __call__(
        self,
        frames: torch.Tensor,
        fps: float,
        prompt: str | None = None,
        *,
        seed: int = 0,
        progress: bool = True,
        what: str = "the clip",
    ) -> torch.Tensor:
        """Waveform float32 [samples] for a clip [3, F, H, W] in [0, 1] at `fps`, as long as the clip
        (`lumina_rt.video.audio_length(F, fps, sample_rate)` samples)."""
        clip = self.conform(frames, fps, what)
        kwargs: dict[str, Any] = {"seed": int(seed), "progress": progress}
        if self.steps is not None:
            kwargs["steps"] = self.steps
        if self.guidance is not None:
            kwargs["guidance"] = self.guidance
        wave = self.v2a.generate_audio(clip, prompt, **kwargs)
        wave = torch.as_tensor(wave).detach().float().reshape(-1).cpu()
        if not bool(torch.isfinite(wave).all()):
            raise MediaError(f"the sound model produced NaN or infinite samples for {what}")
        samples = audio_length(int(frames.shape[1]), fps, self.sample_rate)
        logger.debug("sound for %s: %d model frames, %d samples -> %d", what, clip.shape[1], wave.numel(), samples)
        return torch.from_numpy(fit_audio(wave, samples))

    def batch(
        self,
        frames: torch.Tensor,
        fps: float,
        prompts: list[str | None] | None = None,
        *,
        seed: int = 0,
        progress: bool = True,
    ) -> torch.Tensor:
        """Waveforms [B, samples] for clips [B, 3, F, H, W] at `fps`, one clip at a time, each with `seed`."""
        prompts = [None] * frames.shape[0] if prompts is None else list(prompts)
        if len(prompts) != frames.shape[0]:
            raise InputError(f"{len(prompts)} prompts for {frames.shape[0]} clips")
        return torch.stack(
            [
                self(clip, fps, prompt, seed=seed, progress=progress, what=f"clip {i}")
                for i, (clip, prompt) in enumerate(zip(frames, prompts))
            ]
        )


def load_soundtrack(
    engine_dir: str | os.PathLike | None = None,
    backend: str = "auto",
    reference: bool = False,
    steps: int | None = None,
) -> Soundtrack:
    """The audio stage the commands use: the V2A engine of `engine_dir`, by default the built-in model's engines
    (built on first use, `lumina_rt.builtin.engines.builtin_engines`), or with `reference` the built-in V2A model's
    reference torch model (no engines)."""
    from lumina_rt.builtin.engines import builtin_engines
    from lumina_rt.engines.manifest import read_manifest
    from lumina_rt.engines.v2a_engine import load_v2a

    if reference:
        return Soundtrack.builtin(steps=steps)
    if engine_dir is None:
        engine_dir = builtin_engines()
    return Soundtrack(load_v2a(engine_dir, read_manifest(engine_dir), backend), steps=steps)
