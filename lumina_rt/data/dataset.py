"""Deterministic training batches from the synthetic generator.

Every batch is a pure function of (seed, step, kind), so a resumed run sees exactly the batches an
uninterrupted run would. Videos exclude the held-out (colour, shape, direction) combinations; captions and
motion scores come from the frames as measured (`lumina_rt.data.motion`), not from generator settings.

`caption_set="v1"` is the shipped model's data (bit-identical to before issue 29); "v2" draws v2 clips
(`random_spec_v2`: more backgrounds, distractors) with v2 captions (`captions.video_caption_v2`) of a split:
"train" for training, "heldout" for the held-out templates, paraphrases and backgrounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lumina_rt.data import captions as C
from lumina_rt.data.motion import analyse_frames
from lumina_rt.data.synthetic import SOURCES, ClipSpec, random_spec, random_spec_v2, render_clip

KIND_IDS = {"video": 1, "image": 2, "eval": 3}


@dataclass
class Batch:
    x: torch.Tensor  # [B, 3, F, H, W] in [-1, 1] (pixel latents)
    captions: list[str]
    sources: list[str]
    motion: torch.Tensor  # [B] measured motion score (images: -1, no motion)
    specs: list[ClipSpec]


class SyntheticDataset:
    """Multi-source synthetic clips; `video_batch` / `image_batch` for a training step."""

    def __init__(
        self,
        seed: int = 0,
        sources: tuple[str, ...] = SOURCES,
        hold_out: bool = True,
        caption_set: str = "v1",
        split: str = "train",
    ):
        unknown = [s for s in sources if s not in SOURCES]
        if unknown:
            raise ValueError(f"unknown data sources {unknown}; known: {list(SOURCES)}")
        C._check(caption_set, split)
        if caption_set == "v1" and split != "train":
            raise ValueError("caption set v1 has no held-out split (only v2 has one)")
        self.caption_set, self.split = caption_set, split
        self.seed = int(seed)
        self.sources = tuple(sources)
        self.hold_out = hold_out
        self.train_combos = [
            (c, s, d)
            for c in C.COLOURS
            for s in C.SHAPES
            for d in C.DIRECTIONS
            if not (hold_out and C.is_held_out(c, s, d))
        ]

    def rng(self, step: int, kind: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(step), KIND_IDS[kind]])

    def _specs(self, rng: np.random.Generator, n: int, frames: int) -> list[ClipSpec]:
        out = []
        for _ in range(n):
            colour, shape, direction = self.train_combos[int(rng.integers(len(self.train_combos)))]
            source = self.sources[int(rng.integers(len(self.sources)))]
            speed = C.SPEEDS[int(rng.integers(len(C.SPEEDS)))]
            if self.caption_set == "v1":
                out.append(random_spec(rng, source, colour, shape, direction, speed, frames))
            else:
                out.append(random_spec_v2(rng, source, colour, shape, direction, speed, frames, self.split))
        return out

    def _video_caption(self, spec: ClipSpec, speed: str, choice: int) -> str:
        if self.caption_set == "v1":
            return C.video_caption(spec.colour, spec.shape, spec.direction, speed, spec.background, choice)
        args = (spec.colour, spec.shape, spec.direction, speed, spec.background)
        return C.video_caption_v2(*args, choice=choice, split=self.split)

    def _image_caption(self, spec: ClipSpec, choice: int) -> str:
        if self.caption_set == "v1":
            return C.image_caption(spec.colour, spec.shape, spec.background, choice)
        return C.image_caption_v2(spec.colour, spec.shape, spec.background, choice, self.split)

    def video_batch(self, step: int, n: int, size: int = 32, frames: int = 8, frame_stride: int = 1) -> Batch:
        rng = self.rng(step, "video")
        specs = self._specs(rng, n, frames * frame_stride - (frame_stride - 1))
        clips, caps, scores = [], [], []
        for spec in specs:
            clip = render_clip(spec, frames, size, frame_stride)
            measured = analyse_frames(clip)
            # Motion score: per frame of this clip (so a lower frame rate gives a larger score); the speed word
            # describes the speed per generator frame (score / stride), the same at every stage.
            word = C.speed_word(measured.score / frame_stride)
            caps.append(self._video_caption(spec, word, int(rng.integers(1000))))
            clips.append(clip)
            scores.append(measured.score)
        x = torch.stack(clips) * 2 - 1
        return Batch(x, caps, [s.source for s in specs], torch.tensor(scores, dtype=torch.float32), specs)

    def image_batch(self, step: int, n: int, size: int = 32) -> Batch:
        rng = self.rng(step, "image")
        specs = self._specs(rng, n, 1)
        clips = [render_clip(spec, 1, size) for spec in specs]
        caps = [self._image_caption(s, int(rng.integers(1000))) for s in specs]
        x = torch.stack(clips) * 2 - 1
        return Batch(x, caps, [s.source for s in specs], torch.full((n,), -1.0), specs)
