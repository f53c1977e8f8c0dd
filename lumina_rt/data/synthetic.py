"""The clip generator: one saturated object (circle / square / triangle) moving in a straight line.

Geometry is defined on a 32 x 32 reference canvas; `render_clip` draws at any size by scaling coordinates.
Two sources look clearly different:

- ``toon``: bright low-saturation backgrounds (plain, striped, dotted), clean flat objects;
- ``grainy``: dark backgrounds (plain, striped, checkered), per-frame sensor noise, dimmer objects.

Moving objects leave a fading trail behind them (`trail_length`). Backgrounds are always low in chroma
(max - min of RGB), the objects high, which is what the motion measurement and the evaluator use to find the object.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from lumina_rt.data.captions import COLOURS, DIRECTIONS, SHAPES, SPEED_RANGES

REFERENCE_SIZE = 32
# Motion trail (an after-image, as a camera's shutter smears a moving object): faded copies of the shape behind the
# object, TRAIL_BASE + TRAIL_PER_SPEED * speed reference pixels long, starting at TRAIL_ALPHA opacity. It makes the
# direction and speed of motion visible in every single frame - a local cue like colour; without it a 56-minute run
# learned colour but ignored the direction word (swapping it changed the loss by 0.3 %).
TRAIL_BASE, TRAIL_PER_SPEED, TRAIL_ALPHA, TRAIL_SAMPLES = 3.0, 3.0, 0.6, 8
SOURCES = ("toon", "grainy")
SOURCE_BACKGROUNDS = {"toon": ("plain", "striped", "dotted"), "grainy": ("plain", "striped", "checkered")}
# v2 data (`random_spec_v2`): more backgrounds per source for training, two more only for the held-out split
V2_SOURCE_BACKGROUNDS = {
    "train": {
        "toon": ("plain", "striped", "dotted", "gradient", "mottled"),
        "grainy": ("plain", "striped", "checkered", "gradient", "mottled"),
    },
    "heldout": {"toon": ("wavy", "grid"), "grainy": ("wavy", "grid")},
}
V2_ONLY_BACKGROUNDS = ("gradient", "mottled", "wavy", "grid")
DISTRACTOR_PROB = 0.5  # v2: chance of a clip having distractors (then 1 or 2)


@dataclass(frozen=True)
class ClipSpec:
    """Everything the generator needs for one clip (reference-canvas units: pixels of a 32 x 32 frame)."""

    source: str
    colour: str
    shape: str
    direction: str
    speed: float  # pixels per frame at 32 px (the generator's setting; captions use the *measured* score)
    radius: float
    x0: float
    y0: float
    background: str
    level: float  # background grey level
    tint: tuple[float, float, float]
    period: float  # stripe / dot / checker period
    axis: int  # stripe orientation (0 vertical stripes, 1 horizontal)
    noise_seed: int
    # v2 only (`random_spec_v2`): static grey distractor objects (shape, x, y, radius, grey level), drawn under the
    # object and its trail; grey has no chroma, so the motion analyser and the evaluator never take them for it.
    distractors: tuple[tuple[str, float, float, float, float], ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def random_spec(
    rng: np.random.Generator,
    source: str,
    colour: str,
    shape: str,
    direction: str,
    speed_name: str,
    frames: int = 8,
) -> ClipSpec:
    """A clip with random size, start, speed (within the named range) and background, kept inside the frame."""
    lo, hi = SPEED_RANGES[speed_name]
    speed = float(rng.uniform(lo, hi))
    radius = float(rng.uniform(4.0, 5.5))
    travel = speed * (frames - 1)
    margin = radius + 0.75
    dx, dy = DIRECTIONS[direction]
    pos = []
    for d in (dx, dy):
        if d == 0:
            pos.append(float(rng.uniform(margin, REFERENCE_SIZE - margin)))
        else:
            start = float(rng.uniform(margin, max(margin, REFERENCE_SIZE - margin - travel)))
            pos.append(start if d > 0 else REFERENCE_SIZE - start)
    backgrounds = SOURCE_BACKGROUNDS[source]
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    level = float(rng.uniform(0.6, 0.9) if source == "toon" else rng.uniform(0.08, 0.3))
    tint = tuple(float(v) for v in rng.uniform(-0.04, 0.04, size=3))
    return ClipSpec(
        source=source,
        colour=colour,
        shape=shape,
        direction=direction,
        speed=speed,
        radius=radius,
        x0=pos[0],
        y0=pos[1],
        background=background,
        level=level,
        tint=tint,  # type: ignore[arg-type]
        period=float(rng.uniform(4.0, 8.0)),
        axis=int(rng.integers(2)),
        noise_seed=int(rng.integers(2**31)),
    )


def random_spec_v2(
    rng: np.random.Generator,
    source: str,
    colour: str,
    shape: str,
    direction: str,
    speed_name: str,
    frames: int = 8,
    split: str = "train",
) -> ClipSpec:
    """A v2 clip: `random_spec`'s object and motion, a background of the split's (`V2_SOURCE_BACKGROUNDS`: held-out
    kinds only for "heldout"), a slightly wider tint, and with probability `DISTRACTOR_PROB` one or two static grey
    distractors (a smaller shape, radius 1.5-3 reference pixels, anywhere; not named in the caption)."""
    base = random_spec(rng, source, colour, shape, direction, speed_name, frames)
    backgrounds = V2_SOURCE_BACKGROUNDS[split][source]
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    tint = tuple(float(v) for v in rng.uniform(-0.05, 0.05, size=3))
    distractors = []
    if rng.random() < DISTRACTOR_PROB:
        for _ in range(int(rng.integers(1, 3))):
            grey = float(rng.uniform(0.0, 0.35) if base.level > 0.5 else rng.uniform(0.55, 0.95))
            distractors.append((
                SHAPES[int(rng.integers(len(SHAPES)))],
                float(rng.uniform(2, REFERENCE_SIZE - 2)),
                float(rng.uniform(2, REFERENCE_SIZE - 2)),
                float(rng.uniform(1.5, 3.0)),
                grey,
            ))  # fmt: skip
    return replace(base, background=background, tint=tint, distractors=tuple(distractors))  # type: ignore[arg-type]


def _background(spec: ClipSpec, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    """[3, H, W] background in reference-canvas coordinates yy, xx."""
    level = torch.full_like(xx, spec.level)
    if spec.background in V2_ONLY_BACKGROUNDS:
        level = level + _v2_texture(spec, yy, xx)
    if spec.background == "striped":
        coord = xx if spec.axis == 0 else yy
        level = level + 0.08 * torch.sign(torch.sin(2 * math.pi * coord / spec.period))
    elif spec.background == "dotted":
        cx = torch.remainder(xx, spec.period) - spec.period / 2
        cy = torch.remainder(yy, spec.period) - spec.period / 2
        level = level - 0.15 * (cx**2 + cy**2 < 1.2**2).float()
    elif spec.background == "checkered":
        cell = (torch.floor(xx / spec.period) + torch.floor(yy / spec.period)) % 2
        level = level + 0.07 * (2 * cell - 1)
    tint = torch.tensor(spec.tint, dtype=torch.float32)[:, None, None]
    return level[None] + tint


def _v2_texture(spec: ClipSpec, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    """Grey-level offsets [H, W] of the v2-only backgrounds (smooth functions of reference coordinates, so they look
    the same at any size; the phases come from the clip's noise seed)."""
    phase = np.random.default_rng(spec.noise_seed).uniform(0, 2 * math.pi, size=4)
    along, across = (xx, yy) if spec.axis == 0 else (yy, xx)
    if spec.background == "gradient":  # a linear ramp across the frame, either way round
        ramp = along / REFERENCE_SIZE - 0.5
        return 0.22 * (ramp if phase[0] < math.pi else -ramp)
    if spec.background == "mottled":  # soft blotches: a product of two low-frequency sines plus a third
        f = 2 * math.pi / (2.5 * spec.period)
        blotch = torch.sin(f * xx + phase[0]) * torch.sin(f * yy + phase[1]) + 0.5 * torch.sin(
            0.7 * f * (xx + yy) + phase[2]
        )
        return 0.06 * blotch
    if spec.background == "wavy":  # held out: stripes whose edges wiggle
        shift = 1.5 * torch.sin(2 * math.pi * across / 10.0 + phase[0])
        return 0.08 * torch.sign(torch.sin(2 * math.pi * (along + shift) / spec.period))
    if spec.background == "grid":  # held out: thin darker lines both ways (anti-aliased by the smooth ramp)
        dx = (torch.remainder(xx, spec.period) - spec.period / 2).abs()
        dy = (torch.remainder(yy, spec.period) - spec.period / 2).abs()
        line = ((spec.period / 2 - torch.minimum(dx, dy) - 0.3) / 0.5 + 0.5).clamp(0, 1)
        return -0.14 * line
    raise ValueError(f"unknown background {spec.background!r}")


def _shape_alpha(shape: str, px: torch.Tensor, py: torch.Tensor, radius: float, pixel: float) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of a shape centred at the origin (px, py relative coordinates)."""
    if shape == "circle":
        dist = torch.sqrt(px**2 + py**2) - radius
    elif shape == "square":
        dist = torch.maximum(px.abs(), py.abs()) - radius * 0.85
    elif shape == "triangle":
        inradius = radius * 0.55
        dist = None
        for k in range(3):  # pointing up: edge normals at -90 + 120 k degrees... (bottom edge normal points down)
            ang = math.pi / 2 + 2 * math.pi * k / 3
            d = px * math.cos(ang) + py * math.sin(ang) - inradius
            dist = d if dist is None else torch.maximum(dist, d)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return (0.5 - dist / pixel).clamp(0.0, 1.0)


def trail_length(speed: float) -> float:
    """Length (reference pixels) of the fading trail behind an object moving at `speed` pixels per frame."""
    return TRAIL_BASE + TRAIL_PER_SPEED * speed


def _trail_alpha(
    spec: ClipSpec, xx: torch.Tensor, yy: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, pixel: float
) -> torch.Tensor:
    """Coverage [F, H, W] of the trail behind object centres cx, cy [F, 1, 1]: copies of the shape, fading out."""
    dx, dy = DIRECTIONS[spec.direction]
    length = trail_length(spec.speed)
    j = torch.arange(1, TRAIL_SAMPLES + 1, dtype=torch.float32)[:, None, None, None]
    back = length * j / TRAIL_SAMPLES  # [J, 1, 1, 1] distances behind the object
    weight = TRAIL_ALPHA * (1 - (j - 1) / TRAIL_SAMPLES)
    a = _shape_alpha(spec.shape, xx - (cx - dx * back), yy - (cy - dy * back), spec.radius, pixel)
    return (weight * a).amax(0)


def render_clip(
    spec: ClipSpec, frames: int = 8, size: int = 32, frame_stride: int = 1, trail: bool = True
) -> torch.Tensor:
    """Frames [3, frames, size, size] in [0, 1]; frame k shows generator time k * frame_stride.

    `trail=False` draws no motion trail (the V2A clips, whose objects turn around: `lumina_rt.data.sound`)."""
    pixel = REFERENCE_SIZE / size
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * pixel
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    background = _background(spec, yy, xx)[:, None]  # [3, 1, H, W]
    for shape, x, y, radius, grey in spec.distractors:  # static grey objects, part of the background
        a = _shape_alpha(shape, xx - x, yy - y, radius, pixel)
        background = background * (1 - a) + grey * a
    colour = torch.tensor(COLOURS[spec.colour], dtype=torch.float32)[:, None, None, None]
    if spec.source == "grainy":
        colour = colour * 0.8
    dx, dy = DIRECTIONS[spec.direction]
    # Object centres of all frames at once (computed in float64 as Python floats, then rounded, per frame).
    steps = [k * frame_stride for k in range(frames)]
    cx = torch.tensor([spec.x0 + dx * spec.speed * s for s in steps], dtype=torch.float32)[:, None, None]
    cy = torch.tensor([spec.y0 + dy * spec.speed * s for s in steps], dtype=torch.float32)[:, None, None]
    alpha = _shape_alpha(spec.shape, xx - cx, yy - cy, spec.radius, pixel)[None]  # [1, F, H, W]
    if trail:
        alpha_trail = _trail_alpha(spec, xx, yy, cx, cy, pixel)[None]
        video = background * (1 - alpha_trail) + colour * alpha_trail
    else:
        video = background.expand(3, frames, size, size)
    video = video * (1 - alpha) + colour * alpha
    if spec.source == "grainy":  # sensor noise, drawn frame by frame from the clip's own generator
        gen = torch.Generator().manual_seed(spec.noise_seed)
        video = video + 0.035 * torch.stack([torch.randn((3, size, size), generator=gen) for _ in range(frames)], 1)
    return video.clamp(0.0, 1.0)
