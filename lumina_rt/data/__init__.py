"""Synthetic multi-source video data for the built-in model: clips, captions, motion measured from frames.

- `synthetic`: the generator (shapes, colours, directions, speeds, backgrounds, two visually distinct sources;
  `random_spec_v2`: v2 backgrounds and static grey distractors);
- `captions`: template captions, per-source system prompts, the fixed vocabulary, held-out combinations; caption
  set "v1" (the shipped model's) and "v2" (paraphrases, more templates, a held-out split of templates, words and
  backgrounds);
- `motion`: object detection, colour, direction and motion score measured from frames (no generator settings);
- `dataset`: deterministic training batches (videos at any stage resolution / frame rate, and images).
"""

from lumina_rt.data.captions import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SPEED_RANGES,
    SPEEDS,
    SYSTEM_PROMPTS,
    is_held_out,
    vocabulary,
)
from lumina_rt.data.dataset import Batch, SyntheticDataset
from lumina_rt.data.motion import FrameAnalysis, analyse_frames, motion_score
from lumina_rt.data.synthetic import SOURCES, ClipSpec, render_clip

__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "SHAPES",
    "SPEEDS",
    "SPEED_RANGES",
    "SYSTEM_PROMPTS",
    "SOURCES",
    "Batch",
    "ClipSpec",
    "FrameAnalysis",
    "SyntheticDataset",
    "analyse_frames",
    "is_held_out",
    "motion_score",
    "render_clip",
    "vocabulary",
]
