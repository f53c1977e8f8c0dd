"""Measuring what the frames show: the object's mask, colour, trajectory, direction and motion score.

Works on any frames [3, F, H, W] in [0, 1] (training clips or generated videos). The object is the set of
pixels with high chroma (max - min over RGB): backgrounds in the data are low-chroma, objects saturated.
Each high-chroma pixel is labelled with its nearest palette hue; the object's colour is the label with the most
mask weight over the clip, and the object is the high-chroma region of that colour (stray specks of other
colours in generated videos are ignored). The motion score is the mean displacement of the object's centroid
between consecutive frames, in pixels per frame rescaled to a 32-pixel-wide frame - the quantity mean
optical-flow magnitude over the object gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lumina_rt.data.captions import COLOURS, DIRECTIONS

CHROMA_LO, CHROMA_HI = 0.2, 0.45  # soft mask ramp on chroma
MIN_AREA = 1.5  # pixels (at 32 px) of mask needed to count the object as present in a frame


def _hue(rgb: torch.Tensor) -> torch.Tensor:
    """Hue angle in degrees of RGB rows [..., 3]."""
    r, g, b = rgb.unbind(-1)
    return torch.rad2deg(torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360


_PALETTE_HUES = {name: float(_hue(torch.tensor(rgb))) for name, rgb in COLOURS.items()}
_PALETTE_NAMES = list(_PALETTE_HUES)
_PALETTE_TENSOR = torch.tensor([_PALETTE_HUES[n] for n in _PALETTE_NAMES])


def palette_labels(frames: torch.Tensor) -> torch.Tensor:
    """Index into the palette of the nearest hue, per pixel of frames [3, ...] -> [...]."""
    h = _hue(frames.movedim(0, -1))
    diff = (h[..., None] - _PALETTE_TENSOR).abs()
    return torch.minimum(diff, 360 - diff).argmin(-1)


@dataclass
class FrameAnalysis:
    present: bool
    colour: str | None
    direction: str | None
    score: float  # motion score: mean centroid displacement, pixels / frame at 32 px
    centroids: list[tuple[float, float] | None] = field(default_factory=list)  # (x, y) per frame, 32-px units
    area: float = 0.0  # mean mask area in pixels at 32 px

    def to_dict(self) -> dict:
        return dict(
            present=self.present, colour=self.colour, direction=self.direction, score=self.score, area=self.area
        )


def object_mask(frames: torch.Tensor) -> torch.Tensor:
    """Soft object mask [F, H, W] of frames [3, F, H, W]."""
    chroma = frames.amax(0) - frames.amin(0)
    return ((chroma - CHROMA_LO) / (CHROMA_HI - CHROMA_LO)).clamp(0.0, 1.0)


def analyse_frames(frames: torch.Tensor) -> FrameAnalysis:
    """Colour, direction and motion score of the object in frames [3, F, H, W] in [0, 1]."""
    if frames.dim() != 4 or frames.shape[0] != 3:
        raise ValueError(f"frames must be [3, F, H, W], got {tuple(frames.shape)}")
    frames = frames.float().clamp(0, 1)
    _, n, h, w = frames.shape
    unit = 32.0 / w
    mask = object_mask(frames)
    labels = palette_labels(frames)
    votes = torch.zeros(len(_PALETTE_NAMES)).index_add_(0, labels.flatten(), mask.flatten())
    dominant = int(votes.argmax())
    mask = mask * (labels == dominant)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * (32.0 / h)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * unit
    total = mask.sum((1, 2))  # [F]
    areas = (total * (unit * (32.0 / h))).tolist()
    weight = total.clamp_min(1e-12)  # frames without the object get no centroid below
    cx = ((mask.sum(1) * xs).sum(-1) / weight).tolist()
    cy = ((mask.sum(2) * ys).sum(-1) / weight).tolist()
    centroids: list[tuple[float, float] | None] = [None if areas[k] < MIN_AREA else (cx[k], cy[k]) for k in range(n)]
    valid = [c for c in centroids if c is not None]
    if not valid:
        return FrameAnalysis(False, None, None, 0.0, centroids, 0.0)
    colour = _PALETTE_NAMES[dominant]
    steps = [math.dist(a, b) for a, b in zip(centroids[:-1], centroids[1:]) if a is not None and b is not None]
    score = sum(steps) / len(steps) if steps else 0.0
    first, last = valid[0], valid[-1]
    dx, dy = last[0] - first[0], last[1] - first[1]
    direction = max(DIRECTIONS, key=lambda d: DIRECTIONS[d][0] * dx + DIRECTIONS[d][1] * dy)
    return FrameAnalysis(True, colour, direction, score, centroids, sum(areas) / len(areas))


def motion_score(frames: torch.Tensor) -> float:
    """Mean object displacement in pixels per frame (at 32 px) of frames [3, F, H, W] in [0, 1]."""
    return analyse_frames(frames).score
