"""Flow-matching sampling: time-aware configs, the guided (CFG) velocity, and the released Euler sampler.

The sampler only sees a *velocity function*

    velocity_fn(x [B, C, F, H, W], t [B], cap_feats [B, L, D], cap_mask [B, L], motion [B], combo: str) -> v

and never knows which backend (torch, fused kernels, ONNX Runtime, TensorRT) computes it, nor which model: x may
be any latent [B, ...] (the V2A pipeline samples audio latents [B, C, T, M] with its "video kept" flag, 1 or 0, in
the motion slot). Time runs from 0 (noise) to 1 (data).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from lumina_rt.config import parse_patch_combo, strict_fields

if TYPE_CHECKING:
    from lumina_rt.caching import CacheRun
from lumina_rt.errors import ConfigError, InputError, ScheduleError

logger = logging.getLogger(__name__)

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str], torch.Tensor]
Scalar = float | int | str
TimeAware = Scalar | Sequence[Any]


# ------------------------------------------------------------------------------------------------
# Time-aware values: `v` or `[default, [t0, v0], [t1, v1], ...]` meaning "v_i once t >= t_i"
# ------------------------------------------------------------------------------------------------


def validate_time_aware(config: TimeAware, name: str = "value") -> None:
    """Raise ScheduleError naming the problem if `config` is not in the released time-aware syntax."""
    if isinstance(config, bool):
        raise ScheduleError(f"{name}: a time-aware value must be a number or string, got {config!r}")
    if isinstance(config, (float, int, str)):
        return
    if not isinstance(config, (list, tuple)) or len(config) == 0:
        raise ScheduleError(f"{name}: expected a value or [default, [t0, v0], ...], got {config!r}")
    if not isinstance(config[0], (float, int, str)) or isinstance(config[0], bool):
        raise ScheduleError(f"{name}: the default (first entry) must be a number or string, got {config[0]!r}")
    previous = float("-inf")
    for entry in config[1:]:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ScheduleError(f"{name}: each switch must be a pair [t, value], got {entry!r} in {config!r}")
        thresh, val = entry
        if not isinstance(thresh, (float, int)) or isinstance(thresh, bool) or not 0.0 <= thresh <= 1.0:
            raise ScheduleError(f"{name}: switch time must be a number in [0, 1], got {thresh!r} in {config!r}")
        if thresh < previous:
            raise ScheduleError(f"{name}: switch times must not decrease, got {thresh!r} after {previous!r}")
        if not isinstance(val, (float, int, str)) or isinstance(val, bool):
            raise ScheduleError(f"{name}: switch value must be a number or string, got {val!r} in {config!r}")
        previous = thresh


def time_aware_value(config: TimeAware, t: float, name: str = "value") -> Scalar:
    """The value of a time-aware config at time t (the last switch with t >= t_i wins, in order)."""
    validate_time_aware(config, name)
    if isinstance(config, (float, int, str)):
        return config
    result = config[0]
    for thresh, val in config[1:]:
        if t >= thresh:
            result = val
        else:
            break
    return result


def _values_of(config: TimeAware) -> list[Scalar]:
    if isinstance(config, (float, int, str)):
        return [config]
    return [config[0], *[v for _, v in config[1:]]]


# ------------------------------------------------------------------------------------------------
# Sample configs and the released presets
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleConfig:
    """A sampling recipe with the released field names (P, step, ts, renorm, cfg, motion, negMotion)."""

    P: TimeAware = "1x2"
    step: int = 70
    ts: float = 8.0
    renorm: float = -1.0
    cfg: TimeAware = 0.0
    motion: TimeAware = -1.0
    negMotion: TimeAware = -1.0
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, patch_combos: Sequence[str] | None = None) -> None:
        """Check every field; with `patch_combos`, also that each scheduled combo is one the model has."""
        for fname in ("P", "cfg", "motion", "negMotion"):
            validate_time_aware(getattr(self, fname), fname)
        for combo in _values_of(self.P):
            if not isinstance(combo, str):
                raise ScheduleError(f"P: patch combos are strings like '1x2', got {combo!r}")
            try:
                parse_patch_combo(combo)
            except ConfigError as exc:
                raise ScheduleError(f"P: {exc}") from None
            if patch_combos is not None and combo not in patch_combos:
                raise ScheduleError(f"P: unknown patch combo {combo!r}; this model has {list(patch_combos)}")
        for fname in ("cfg", "motion", "negMotion"):
            for v in _values_of(getattr(self, fname)):
                if isinstance(v, str):
                    raise ScheduleError(f"{fname}: expected numbers, got {v!r}")
        if not isinstance(self.step, int) or self.step < 2:
            raise ScheduleError(f"step must be an integer >= 2 (grid points), got {self.step!r}")
        if not self.ts > 0:
            raise ScheduleError(f"ts (time shift) must be > 0, got {self.ts!r}")

    def combos(self) -> list[str]:
        return [str(c) for c in _values_of(self.P)]

    @property
    def guided(self) -> bool:
        """Whether guidance is on at some t (a negative condition is needed)."""
        return any(float(v) > 0 for v in _values_of(self.cfg))

    def replace(self, **changes: Any) -> SampleConfig:
        import dataclasses

        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dict(
            name=self.name,
            P=self.P,
            step=self.step,
            ts=self.ts,
            renorm=self.renorm,
            cfg=self.cfg,
            motion=self.motion,
            negMotion=self.negMotion,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleConfig:
        """A recipe from its fields (`to_dict`'s); ScheduleError naming unknown keys."""
        return strict_fields(cls, d, "sample config", ScheduleError)

    @classmethod
    def from_name(cls, name: str) -> SampleConfig:
        if name not in SAMPLE_PRESETS:
            raise ScheduleError(f"unknown sample preset {name!r}; known presets: {sorted(SAMPLE_PRESETS)}")
        return cls(**SAMPLE_PRESETS[name], name=name)


_F24 = dict(step=70, ts=24.0, renorm=2.0, cfg=[20.0, [0.2, 0.0]], motion=6.0, negMotion=[2.0, [0.05, 6.0]])
_F16 = dict(step=70, ts=8.0, renorm=-1.0, cfg=[12.0, [0.4, 0.0]], motion=6.0, negMotion=[2.0, [0.05, 6.0]])

SAMPLE_PRESETS: dict[str, dict[str, Any]] = {
    "f24F96R960": dict(P="1x2", **_F24),
    "f24F96R960-MultiScale": dict(P=["2x4", [0.03, "2x2"], [0.125, "1x2"]], **_F24),
    "f16F64R512": dict(P="1x2", **_F16),
    "f16F64R512-MultiScale": dict(P=["2x4", [0.075, "2x2"], [0.3, "1x2"]], **_F16),
}


# ------------------------------------------------------------------------------------------------
# Time grid and guided velocity
# ------------------------------------------------------------------------------------------------


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """The released time shift t' = t / (t + s - s t) (s > 1 moves times toward noise, t = 0); trainer and sampler."""
    return t / (t + shift - shift * t)


def time_grid(steps: int, shift: float) -> torch.Tensor:
    """Shifted grid (float32, as released): t = linspace(0, 1, steps) through `shift_time`."""
    if steps < 2:
        raise ScheduleError(f"steps must be >= 2 grid points, got {steps}")
    return shift_time(torch.linspace(0.0, 1.0, steps), shift)


@dataclass
class Conditioning:
    """Caption features for a batch of B prompts: cap_feats [B, L, D], cap_mask [B, L]."""

    cap_feats: torch.Tensor
    cap_mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.cap_feats.dim() != 3:
            raise InputError(f"cap_feats must be [B, L, D], got shape {tuple(self.cap_feats.shape)}")
        if self.cap_mask.shape != self.cap_feats.shape[:2]:
            raise InputError(
                f"cap_mask shape {tuple(self.cap_mask.shape)} does not match cap_feats [B, L] "
                f"= {tuple(self.cap_feats.shape[:2])}"
            )


def pad_caption_tokens(feats: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad caption features [B, L, D] and mask [B, L] to `length` tokens (masked tokens change no output)."""
    extra = length - feats.shape[1]
    if extra <= 0:
        return feats, mask
    return torch.nn.functional.pad(feats, (0, 0, 0, extra)), torch.nn.functional.pad(mask, (0, extra))


def _pad_captions(a: Conditioning, b: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack two caption batches, zero-padding the shorter to a common length (masked tokens change nothing)."""
    length = max(a.cap_feats.shape[1], b.cap_feats.shape[1])
    fa, ma = pad_caption_tokens(a.cap_feats, a.cap_mask, length)
    fb, mb = pad_caption_tokens(b.cap_feats, b.cap_mask, length)
    return torch.cat([fa, fb]), torch.cat([ma, mb.to(ma.dtype)])


def guided_velocity(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    t: float,
    pos: Conditioning,
    neg: Conditioning | None,
    config: SampleConfig,
    item_motion: torch.Tensor | None = None,
    guidance: CacheRun | None = None,
) -> torch.Tensor:
    """Classifier-free-guided velocity at time t for the positive samples x [B, ...].

    Positive and negative branches run as one batch (the negative on a copy of x with the negative caption
    and motion). guided = pos + s * (pos - neg); if renorm > 0 and its per-item norm exceeds
    renorm * norm(pos), it is scaled down to that norm. A scale of 0 at t skips the negative branch.
    `item_motion` [B]: one positive motion score per sample, used wherever the schedule's motion at t is
    conditioned (>= 0); where the schedule says unconditioned (< 0) that wins.
    `guidance`: a cache run whose policy reuses the guidance difference (`lumina_rt.caching`): on a guided step it
    may run the positive branch alone and take pos - neg from its prediction.
    """
    b = x.shape[0]
    if pos.cap_feats.shape[0] != b:
        raise InputError(f"positive captions have batch {pos.cap_feats.shape[0]}, samples have batch {b}")
    combo = str(time_aware_value(config.P, t, "P"))
    scale = float(time_aware_value(config.cfg, t, "cfg"))
    motion = float(time_aware_value(config.motion, t, "motion"))
    t_vec = torch.full((b,), t, dtype=torch.float32, device=x.device)
    m_vec = torch.full((b,), motion, dtype=torch.float32, device=x.device)
    if item_motion is not None and motion >= 0:
        if tuple(item_motion.shape) != (b,):
            raise InputError(f"item_motion must have shape ({b},), got {tuple(item_motion.shape)}")
        m_vec = item_motion.to(device=x.device, dtype=torch.float32)
    if scale > 0.0:
        if neg is None:
            raise InputError(f"cfg scale {scale} at t={t:.4f} needs a negative caption (neg=None)")
        if neg.cap_feats.shape[0] != b:
            raise InputError(f"negative captions have batch {neg.cap_feats.shape[0]}, samples have batch {b}")
        neg_motion = float(time_aware_value(config.negMotion, t, "negMotion"))
        if guidance is not None and guidance.reuses_guidance and not guidance.evaluate_negative(t, combo):
            v_pos = velocity_fn(x, t_vec, pos.cap_feats, pos.cap_mask, m_vec, combo).float()
            guided = v_pos + scale * guidance.predict_guidance(t)
        else:
            cap_feats, cap_mask = _pad_captions(pos, neg)
            out = velocity_fn(
                torch.cat([x, x]),
                torch.cat([t_vec, t_vec]),
                cap_feats,
                cap_mask,
                torch.cat([m_vec, torch.full_like(m_vec, neg_motion)]),
                combo,
            ).float()
            v_pos, v_neg = out[:b], out[b:]
            if guidance is not None and guidance.reuses_guidance:
                guidance.record_guidance(t, v_pos - v_neg)
            guided = v_pos + scale * (v_pos - v_neg)
        if guidance is not None:
            guidance.record_positive(t, v_pos, positive_key(config, t))
        if float(config.renorm) > 0.0:
            dims = tuple(range(1, v_pos.dim()))
            max_norm = torch.linalg.vector_norm(v_pos, dim=dims, keepdim=True) * float(config.renorm)
            new_norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
            guided = torch.where(new_norm < max_norm, guided, guided * (max_norm / new_norm))
        return guided
    return velocity_fn(x, t_vec, pos.cap_feats, pos.cap_mask, m_vec, combo).float()


def segment_key(config: SampleConfig, t: float) -> tuple[Scalar, ...]:
    """What must stay the same for velocities at different t to be comparable: patch combo, guidance, motion."""
    return tuple(time_aware_value(getattr(config, f), t, f) for f in ("P", "cfg", "motion", "negMotion"))


def bridge_key(config: SampleConfig, t: float) -> tuple[Scalar, ...]:
    """A segment's key without the patch combo: where only the patch size switches, a caching policy with a bridge
    threshold may continue across the switch (`lumina_rt.caching`)."""
    return tuple(time_aware_value(getattr(config, f), t, f) for f in ("cfg", "motion", "negMotion"))


def positive_key(config: SampleConfig, t: float) -> tuple[Scalar, ...]:
    """What the positive branch's velocity depends on besides x and t: patch combo and motion (not the guidance
    scale, not the negative motion)."""
    return tuple(time_aware_value(getattr(config, f), t, f) for f in ("P", "motion"))


def sample_euler(
    velocity_fn: VelocityFn,
    z: torch.Tensor,
    pos: Conditioning,
    neg: Conditioning | None,
    config: SampleConfig,
    progress: bool = True,
    return_trajectory: bool = False,
    callback: Callable[[int, float, str], None] | None = None,
    patch_combos: Sequence[str] | None = None,
    item_motion: torch.Tensor | None = None,
    cache: CacheRun | None = None,
    desc: str = "sampling",
) -> torch.Tensor:
    """Euler flow-matching sampling from noise z [B, C, F, H, W] (or any latent [B, ...]) on the shifted grid.

    Returns the final sample, or with `return_trajectory` the states at every grid point [steps, B, ...].
    `callback(step, t, combo)` is called before each velocity evaluation. With `patch_combos` (the model's),
    a schedule naming another patch size is refused before any work. `item_motion`: see `guided_velocity`.
    `cache` (`lumina_rt.caching`): predict some steps' velocities instead of evaluating the model; `callback` then
    runs only before the evaluations. Without it every step evaluates the model; with a policy that reuses the
    guidance difference, some guided steps run the positive branch alone. `desc`: the progress bar's label.
    """
    config.validate(patch_combos)
    if not bool(torch.isfinite(z).all()):
        raise InputError("initial noise z contains NaN or infinite values")
    grid = time_grid(config.step, config.ts).tolist()
    x = z.float()
    states = [x] if return_trajectory else None
    bar = tqdm(range(len(grid) - 1), desc=desc, unit="step", disable=not progress, leave=False)
    for k in bar:
        t0, t1 = grid[k], grid[k + 1]
        combo = str(time_aware_value(config.P, t0, "P"))
        bar.set_postfix(t=f"{t0:.3f}", P=combo, refresh=False)
        evaluate = True
        if cache is not None:  # an unguided step's velocity is the positive branch (continued across the cut-off)
            positive = positive_key(config, t0) if float(time_aware_value(config.cfg, t0, "cfg")) <= 0 else None
            segment, bridge = segment_key(config, t0), bridge_key(config, t0)
            evaluate = cache.evaluate(k, t0, combo, segment, k == len(grid) - 2, positive, bridge)
        if cache is not None and not evaluate:
            v = cache.predict(t0)
        else:
            if callback is not None:
                callback(k, t0, combo)
            v = guided_velocity(velocity_fn, x.to(z.dtype), t0, pos, neg, config, item_motion, guidance=cache)
            if cache is not None:
                cache.record(t0, v)
        x = x + (t1 - t0) * v
        if states is not None:
            states.append(x)
    bar.close()
    return torch.stack(states) if states is not None else x
