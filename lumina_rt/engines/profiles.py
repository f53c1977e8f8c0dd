"""Served shapes -> per-patch-size shape profiles (batch, token count, caption length).

A build serves a set of video shapes: resolutions (height x width, pixels) times frame counts. Through the
checkpoint's latent spec (temporal / spatial compression) each becomes a latent grid (f, h, w), and for a patch
size (pf, p) a token count (f' / pf) * (h / p) * (w / p), with f' = pf for images (F = 1 is repeated).

Per scale the distinct served token counts T1 < T2 < ... give one *range* each: [1, T1], [T1 + 1, T2], ...,
with opt = max = Tk. Every token count up to the largest served one falls in exactly one range (smaller grids:
previews, items of a variable-length list run one by one), and TensorRT tunes each range for its served shape.
Batch: 1 .. 2 x max_batch (guidance runs positive and negative rows together), opt 2. Caption: 1 .. max_caption.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lumina_rt.components import LatentSpec
from lumina_rt.config import ModelConfig, parse_patch_combo, token_grid
from lumina_rt.errors import ConfigError, EngineError, InputError

DEFAULT_RESOLUTIONS = ((960, 960),)
DEFAULT_FRAMES = (1, 96)
DEFAULT_MAX_BATCH = 2
DEFAULT_MAX_CAPTION = 256


@dataclass(frozen=True)
class Range:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(f"a shape range needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    def __contains__(self, n: object) -> bool:
        return isinstance(n, int) and self.min <= n <= self.max

    def as_list(self) -> list[int]:
        return [self.min, self.opt, self.max]

    @classmethod
    def from_list(cls, v: Sequence[int]) -> Range:
        return cls(int(v[0]), int(v[1]), int(v[2]))


@dataclass(frozen=True)
class ServeShapes:
    """What a build serves: resolutions (height, width) in pixels, frame counts, prompts per call, caption length."""

    resolutions: tuple[tuple[int, int], ...] = DEFAULT_RESOLUTIONS
    frames: tuple[int, ...] = DEFAULT_FRAMES
    max_batch: int = DEFAULT_MAX_BATCH
    max_caption: int = DEFAULT_MAX_CAPTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolutions", tuple((int(h), int(w)) for h, w in self.resolutions))
        object.__setattr__(self, "frames", tuple(int(f) for f in self.frames))
        if not self.resolutions or not self.frames:
            raise ConfigError("served shapes need at least one resolution and one frame count")
        for h, w in self.resolutions:
            if h < 1 or w < 1:
                raise ConfigError(f"resolution {h}x{w} must be positive")
        if any(f < 1 for f in self.frames):
            raise ConfigError(f"frame counts must be >= 1, got {list(self.frames)}")
        if self.max_batch < 1 or self.max_caption < 1:
            raise ConfigError(f"max_batch ({self.max_batch}) and max_caption ({self.max_caption}) must be >= 1")

    def shapes(self) -> list[tuple[int, int, int]]:
        """Every served (frames, height, width)."""
        return [(f, h, w) for f in self.frames for h, w in self.resolutions]

    def largest(self) -> tuple[int, int, int]:
        return max(self.shapes(), key=lambda s: s[0] * s[1] * s[2])

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolutions": [list(r) for r in self.resolutions],
            "frames": list(self.frames),
            "max_batch": self.max_batch,
            "max_caption": self.max_caption,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServeShapes:
        return cls(
            resolutions=tuple(tuple(r) for r in d["resolutions"]),
            frames=tuple(d["frames"]),
            max_batch=int(d["max_batch"]),
            max_caption=int(d["max_caption"]),
        )


def parse_resolutions(text: str | Iterable[str]) -> tuple[tuple[int, int], ...]:
    """ "960x960,512x768" (height x width) -> ((960, 960), (512, 768))."""
    items = text.split(",") if isinstance(text, str) else [s for part in text for s in part.split(",")]
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        m = re.fullmatch(r"(\d+)[xX](\d+)", item)
        if m is None:
            raise ConfigError(f"resolution {item!r} must read HEIGHTxWIDTH in pixels, e.g. 960x960")
        out.append((int(m.group(1)), int(m.group(2))))
    if not out:
        raise ConfigError(f"no resolution in {text!r}")
    return tuple(out)


def parse_frames(text: str | Iterable[str]) -> tuple[int, ...]:
    """ "1,96" -> (1, 96)."""
    items = text.split(",") if isinstance(text, str) else [s for part in text for s in part.split(",")]
    try:
        out = tuple(int(x) for x in items if x.strip())
    except ValueError:
        raise ConfigError(f"frame counts must be integers separated by commas, got {text!r}") from None
    if not out:
        raise ConfigError(f"no frame count in {text!r}")
    return out


def token_features(config: ModelConfig, combo: str) -> int:
    """Width of one token of scale `combo`: pf * p * p * in_channels."""
    pf, p = parse_patch_combo(combo)
    return pf * p * p * config.in_channels


def scale_tokens(latent: tuple[int, int, int], pf: int, p: int) -> int:
    """Token count of a latent grid (f, h, w) at patch (pf, p); InputError when the grid does not divide."""
    f, h, w = latent
    if f != 1 and f % pf:
        raise InputError(f"latent frames {f} are not a multiple of the frame patch {pf} (combo {pf}x{p})")
    for name, size in (("height", h), ("width", w)):
        if size % p:
            raise InputError(f"latent {name} {size} is not a multiple of the spatial patch {p} (combo {pf}x{p})")
    f_tokens, h_tokens, w_tokens = token_grid(f, h, w, pf, p)
    return f_tokens * h_tokens * w_tokens


@dataclass(frozen=True)
class ScaleProfile:
    """Shape ranges one patch size's engine accepts."""

    combo: str
    batch: Range
    caption: Range
    tokens: tuple[Range, ...]
    served: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    @property
    def max_tokens(self) -> int:
        return self.tokens[-1].max

    def select(self, batch: int, tokens: int, caption: int) -> int:
        """Index of the token range serving this request; EngineError naming what falls outside."""
        if batch not in self.batch:
            raise EngineError(
                f"batch {batch} is outside every built profile of scale {self.combo} "
                f"(batch {self.batch.min}..{self.batch.max}); rebuild with a larger --max-batch"
            )
        if caption not in self.caption:
            raise EngineError(
                f"caption length {caption} is outside every built profile of scale {self.combo} "
                f"(caption {self.caption.min}..{self.caption.max}); rebuild with a larger --max-caption"
            )
        for i, r in enumerate(self.tokens):
            if tokens in r:
                return i
        raise EngineError(
            f"{tokens} tokens is outside every built profile of scale {self.combo} "
            f"(tokens 1..{self.max_tokens}); rebuild with the resolution / frame count you need "
            "(--resolutions / --frames)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch.as_list(),
            "caption": self.caption.as_list(),
            "tokens": [r.as_list() for r in self.tokens],
            "served": list(self.served),
        }

    @classmethod
    def from_dict(cls, combo: str, d: dict[str, Any]) -> ScaleProfile:
        try:
            return cls(
                combo,
                Range.from_list(d["batch"]),
                Range.from_list(d["caption"]),
                tuple(Range.from_list(r) for r in d["tokens"]),
                tuple(d.get("served", ())),
            )
        except (KeyError, TypeError, IndexError, ValueError, ConfigError) as exc:
            raise EngineError(f"profile of scale {combo} in the manifest is malformed: {exc!r}") from None

    def input_shapes(self, index: int, token_features: int, head_dim: int, cap_dim: int) -> dict[str, list[list[int]]]:
        """min / opt / max shape of every graph input for token range `index` (TensorRT optimization profile)."""
        b, n, cap = self.batch, self.tokens[index], self.caption

        def triple(fn) -> list[list[int]]:
            return [fn(b.min, n.min, cap.min), fn(b.opt, n.opt, cap.opt), fn(b.max, n.max, cap.max)]

        half = head_dim // 2
        return {
            "tokens": triple(lambda bb, nn, _: [bb, nn, token_features]),
            "cos": triple(lambda _, nn, __: [nn, half]),
            "sin": triple(lambda _, nn, __: [nn, half]),
            "t": triple(lambda bb, _, __: [bb]),
            "cap_feats": triple(lambda bb, _, ll: [bb, ll, cap_dim]),
            "cap_mask": triple(lambda bb, _, ll: [bb, ll]),
            "motion": triple(lambda bb, _, __: [bb]),
        }


def compute_profiles(config: ModelConfig, latent: LatentSpec, shapes: ServeShapes) -> dict[str, ScaleProfile]:
    """Per-scale profiles for the served shapes (see module docstring)."""
    out: dict[str, ScaleProfile] = {}
    for combo in config.patch_combos:
        pf, p = parse_patch_combo(combo)
        served, skipped = [], []
        for frames, height, width in shapes.shapes():
            grid = latent.latent_shape(frames, height, width)
            try:
                n = scale_tokens(grid, pf, p)
            except InputError as exc:
                skipped.append(f"{frames}x{height}x{width}: {exc}")
                continue
            served.append({"frames": frames, "height": height, "width": width, "latent": list(grid), "tokens": n})
        if not served:
            raise ConfigError(f"scale {combo} cannot take any served shape: {'; '.join(skipped)}")
        counts = sorted({s["tokens"] for s in served})
        ranges, low = [], 1
        for n in counts:
            ranges.append(Range(low, n, n))
            low = n + 1
        out[combo] = ScaleProfile(
            combo=combo,
            batch=Range(1, min(2, 2 * shapes.max_batch), 2 * shapes.max_batch),
            caption=Range(1, shapes.max_caption, shapes.max_caption),
            tokens=tuple(ranges),
            served=tuple(served),
        )
    return out
