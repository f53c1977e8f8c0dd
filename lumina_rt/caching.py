"""Step caching for the sampler: skip model evaluations whose velocity can be predicted from the last ones.

The policy sees only what a velocity function returns (engines are black boxes: ONNX Runtime and TensorRT graphs give
a velocity, no hidden state), so it works the same for every backend. Per sampling step it decides to evaluate the
model or to predict the velocity from the last two evaluations of the same *segment*:

- a segment is a run of steps with the same patch combo, guidance scale and motion scores; any switch (a new patch
  size changes the token grid; guidance switching off changes the velocity field) starts a new one, and nothing is
  reused across it;
- the first `warmup` steps of each segment and the last step of the run are always evaluated, and at most
  `max_skips` steps in a row are predicted;
- from the last two evaluations (t0, v0), (t1, v1) of the segment the rate of change of the velocity is
  r = ||v1 - v0|| / ||v1|| / (t1 - t0); a step of length dt adds r * dt to the accumulated relative change since
  the last evaluation, and the step is predicted while that stays below `threshold` (EasyCache-style, with the
  velocity's own rate of change as the signal: no calibration);
- a predicted velocity is the first-order extrapolation in t, v1 + (v1 - v0) (t - t1) / (t1 - t0) (TaylorSeer-style),
  or with `mode="reuse"` simply v1.

Levels: "off" (no caching: the sampler runs exactly as without a policy), "safe" and "fast" (thresholds measured on
the built-in model, docs/caching.md), or a number (the threshold).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from lumina_rt.errors import ScheduleError

# level -> (threshold, max_skips); measured on the built-in model's tuning seeds (docs/caching.md)
LEVELS: dict[str, tuple[float, int] | None] = {"off": None, "safe": (0.6, 3), "fast": (1.5, 3)}
MODES = ("extrapolate", "reuse")


@dataclass(frozen=True)
class StepCache:
    """A caching policy (see module docstring); `start()` gives the state of one sampling run."""

    threshold: float
    max_skips: int = 3
    warmup: int = 2
    mode: str = "extrapolate"
    name: str = "custom"

    def __post_init__(self) -> None:
        if not self.threshold >= 0:
            raise ScheduleError(f"cache threshold must be a number >= 0, got {self.threshold!r}")
        if self.max_skips < 1 or self.warmup < 2:
            raise ScheduleError(
                f"cache max_skips must be >= 1 and warmup >= 2 (two evaluations give the rate), got "
                f"max_skips={self.max_skips!r}, warmup={self.warmup!r}"
            )
        if self.mode not in MODES:
            raise ScheduleError(f"unknown cache mode {self.mode!r}; choose one of {MODES}")

    @classmethod
    def from_setting(cls, setting: str | float | StepCache | None) -> StepCache | None:
        """A level name ("off" / "safe" / "fast"), a threshold (a number, or its text), a policy, or None (off)."""
        if setting is None or isinstance(setting, StepCache):
            return setting
        if isinstance(setting, str):
            if setting in LEVELS:
                level = LEVELS[setting]
                return None if level is None else cls(level[0], max_skips=level[1], name=setting)
            try:
                value = float(setting)
            except ValueError:
                raise ScheduleError(
                    f"unknown cache level {setting!r}; choose one of {list(LEVELS)} or a threshold >= 0"
                ) from None
            return cls(value, name=f"threshold {value:g}")
        if isinstance(setting, bool) or not isinstance(setting, (int, float)):
            raise ScheduleError(f"cache must be a level name, a threshold or None, got {setting!r}")
        return cls(float(setting), name=f"threshold {float(setting):g}")

    def start(self) -> CacheRun:
        return CacheRun(self)


@dataclass
class CacheRun:
    """The state of one sampling run under a `StepCache`, and what it did (`stats`, `log`)."""

    policy: StepCache
    stats: dict[str, dict[str, int]] = field(default_factory=dict)  # combo -> {"evaluated": n, "reused": m}
    log: list[tuple[int, float, str, str]] = field(default_factory=list)  # (step, t, combo, "evaluate" | "reuse")
    _segment: Hashable = None
    _history: list[tuple[float, torch.Tensor]] = field(default_factory=list)
    _acc: float = 0.0
    _skips: int = 0
    _t_prev: float = 0.0

    def evaluate(self, step: int, t: float, combo: str, segment: Hashable, last: bool) -> bool:
        """Whether step `step` (at time t, patch `combo`, in `segment`) must evaluate the model."""
        if segment != self._segment:
            self._segment, self._history, self._acc, self._skips = segment, [], 0.0, 0
        decision = True
        if not last and len(self._history) >= self.policy.warmup and self._skips < self.policy.max_skips:
            (t0, v0), (t1, v1) = self._history[-2:]
            rate = float(torch.linalg.vector_norm(v1 - v0) / torch.linalg.vector_norm(v1).clamp_min(1e-12)) / (t1 - t0)
            acc = self._acc + rate * (t - self._t_prev)
            if acc < self.policy.threshold:
                self._acc, decision = acc, False
        self._t_prev = t
        entry = self.stats.setdefault(combo, {"evaluated": 0, "reused": 0})
        entry["evaluated" if decision else "reused"] += 1
        self.log.append((step, t, combo, "evaluate" if decision else "reuse"))
        if decision:
            self._acc, self._skips = 0.0, 0
        else:
            self._skips += 1
        return decision

    def record(self, t: float, v: torch.Tensor) -> None:
        """The velocity the model gave at t (kept: the last two of the segment)."""
        self._history = [*self._history[-1:], (t, v)]

    def predict(self, t: float) -> torch.Tensor:
        """The velocity at t from the last two evaluations of the segment."""
        (t0, v0), (t1, v1) = self._history[-2:]
        if self.policy.mode == "reuse":
            return v1
        return v1 + (v1 - v0) * ((t - t1) / (t1 - t0))

    @property
    def evaluations(self) -> int:
        return sum(s["evaluated"] for s in self.stats.values())

    @property
    def reused(self) -> int:
        return sum(s["reused"] for s in self.stats.values())

    def summary(self) -> dict[str, Any]:
        return {"policy": self.policy.name, "threshold": self.policy.threshold, "evaluations": self.evaluations,
                "reused": self.reused, "per_scale": self.stats}  # fmt: skip
