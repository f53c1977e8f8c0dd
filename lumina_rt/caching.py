"""Step caching for the sampler: skip model evaluations whose velocity can be predicted from the last ones.

The policy sees only what a velocity function returns (engines are black boxes: ONNX Runtime and TensorRT graphs give
a velocity, no hidden state), so it works the same for every backend. Per sampling step it decides to evaluate the
model or to predict the velocity from the last two evaluations of the same *segment*:

- a segment is a run of steps with the same patch combo, guidance scale and motion scores; any switch (a new patch
  size changes the token grid; guidance switching off changes the velocity field) starts a new one, and nothing is
  reused across it, except where guidance switches off inside a patch size: the unguided velocity is the positive
  branch the guided steps before evaluated (`sampling.positive_key`), so that segment continues from their
  positive-branch velocities;
- the first `warmup` steps of each segment and the last step of the run are always evaluated; a predicted step lies
  within `max_span` in t of the last evaluation, and at most `max_skips` steps in a row are predicted (either limit
  None: none);
- from the last two evaluations (t0, v0), (t1, v1) of the segment the rate of change of the velocity is
  r = ||v1 - v0|| / ||v1|| / (t1 - t0); a step of length dt adds r * dt to the accumulated relative change since
  the last evaluation, and the step is predicted while that stays below `threshold` (EasyCache-style, with the
  velocity's own rate of change as the signal: no calibration);
- a predicted velocity is the first-order extrapolation in t, v1 + (v1 - v0) (t - t1) / (t1 - t0) (TaylorSeer-style),
  or with `mode="reuse"` simply v1.

Guidance reuse (`guidance`, a second threshold; None: off): on a guided step that the policy evaluates, the model
runs the positive branch alone when the guidance difference d = v_pos - v_neg is predicted to change little, and the
sampler combines it with a predicted d (renorm applied as on every guided step). The rule is the step cache's, on d
instead of the velocity: two full (positive and negative) evaluations of the segment give d's rate of change, the
accumulated relative change since the last full evaluation must stay below `guidance`, within the same limits
(`max_span`, `max_skips`) guided steps run the positive branch alone, and d is extrapolated in t (or reused,
`mode="reuse"`). Nothing crosses a segment (a guidance switch is one).

Bridging (`bridge`, a jump threshold; None: off, as in every level): where only the patch size switches, the new
segment's first step is evaluated and compared with the segment before, extrapolated to the same t; with the jump
||v - v_hat|| / ||v|| within the threshold the new segment continues with the new scale's level and the old
segment's slope (its next step may be predicted after one evaluation instead of two), otherwise it warms up as any
new segment (guidance differences alike). Every jump is logged (`bridges`, `summary()`): on the bench model and on
the built-in model the scales' velocities differ by 0.85-1.45 of their size at the switches, so no level uses it
(docs/caching.md).

Levels: "off" (no caching: the sampler runs exactly as without a policy), "safe" and "fast" (threshold and span
measured on the built-in model and the released presets, docs/caching.md), "safe+cfg" ("safe" with guidance reuse),
or a number (the threshold).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from lumina_rt.errors import ScheduleError

# level -> (threshold, max_span): a threshold on the accumulated relative change of the velocity, and how far in t a
# predicted step may lie from the last evaluation (no count limit: the same meaning on a 16- or a 70-point grid);
# measured on the built-in model and on the released presets at 70 grid points (docs/caching.md)
LEVELS: dict[str, tuple[float, float] | None] = {"off": None, "safe": (0.6, 0.3), "fast": (1.5, 0.3)}
GUIDANCE_SAFE = 0.5
MODES = ("extrapolate", "reuse")
# level -> (the step-cache level it extends, guidance-reuse threshold); measured on the built-in model (docs/caching.md)
GUIDANCE_LEVELS: dict[str, tuple[str, float]] = {"safe+cfg": ("safe", GUIDANCE_SAFE)}


@dataclass(frozen=True)
class StepCache:
    """A caching policy (see module docstring); `start()` gives the state of one sampling run."""

    threshold: float
    max_skips: int | None = 3  # predicted steps in a row at most (None: no count limit)
    warmup: int = 2
    mode: str = "extrapolate"
    name: str = "custom"
    guidance: float | None = None  # guidance-reuse threshold (module docstring); None: both branches on guided steps
    max_span: float | None = None  # a step is predicted only within this t-distance of the last evaluation
    bridge: float | None = None  # jump threshold across a patch-size switch (module docstring); None: no bridging

    def __post_init__(self) -> None:
        if not self.threshold >= 0:
            raise ScheduleError(f"cache threshold must be a number >= 0, got {self.threshold!r}")
        if (self.max_skips is not None and self.max_skips < 1) or self.warmup < 2:
            raise ScheduleError(
                f"cache max_skips must be >= 1 and warmup >= 2 (two evaluations give the rate), got "
                f"max_skips={self.max_skips!r}, warmup={self.warmup!r}"
            )
        if self.guidance is not None and not self.guidance >= 0:
            raise ScheduleError(f"guidance-reuse threshold must be a number >= 0 or None, got {self.guidance!r}")
        if self.bridge is not None and not self.bridge >= 0:
            raise ScheduleError(f"cache bridge must be a jump threshold >= 0 or None, got {self.bridge!r}")
        if self.max_span is not None and not self.max_span > 0:
            raise ScheduleError(f"cache max_span must be a t-distance > 0 or None, got {self.max_span!r}")
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
                return None if level is None else cls(level[0], max_skips=None, max_span=level[1], name=setting)
            if setting in GUIDANCE_LEVELS:
                base, guidance = GUIDANCE_LEVELS[setting]
                threshold, max_span = LEVELS[base] or (0.0, None)
                return cls(threshold, max_skips=None, max_span=max_span, name=setting, guidance=guidance)
            try:
                value = float(setting)
            except ValueError:
                raise ScheduleError(
                    f"unknown cache level {setting!r}; choose one of {[*LEVELS, *GUIDANCE_LEVELS]} or a threshold >= 0"
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
    guidance_log: list[tuple[float, str, str]] = field(default_factory=list)  # (t, combo, "both" | "positive")
    _segment: Hashable = None
    _history: list[tuple[float, torch.Tensor]] = field(default_factory=list)
    _acc: float = 0.0
    _skips: int = 0
    _t_prev: float = 0.0
    _guidance: list[tuple[float, torch.Tensor]] = field(default_factory=list)  # (t, v_pos - v_neg) of this segment
    _g_acc: float = 0.0
    _g_skips: int = 0
    _g_t_prev: float = 0.0
    _positive: list[tuple[float, torch.Tensor]] = field(default_factory=list)  # (t, v_pos) of guided evaluations
    _positive_key: Hashable = None
    bridges: list[tuple[float, str, str, float, bool]] = field(default_factory=list)  # (t, kind, combo, jump, taken)
    _bridge_key: Hashable = None
    _bridge_from: list[tuple[float, torch.Tensor]] = field(default_factory=list)  # the segment before a switch
    _g_bridge_from: list[tuple[float, torch.Tensor]] = field(default_factory=list)
    _combo: str = ""

    def evaluate(
        self,
        step: int,
        t: float,
        combo: str,
        segment: Hashable,
        last: bool,
        positive: Hashable = None,
        bridge: Hashable = None,
    ) -> bool:
        """Whether step `step` (at time t, patch `combo`, in `segment`) must evaluate the model. `positive`: for an
        unguided segment, the key of the positive branch its velocity is (`sampling.positive_key`): a segment that
        starts where guidance switches off continues from the positive-branch velocities of the guided steps before
        it with that key (the same function of x and t: only the guidance combination stopped). `bridge`: the
        segment's key without the patch combo (`sampling.bridge_key`): where only the patch size switches, a policy
        with a `bridge` threshold may continue the segment before across the switch (module docstring)."""
        self._combo = combo
        if segment != self._segment:
            continued = positive is not None and positive == self._positive_key and len(self._positive) >= 2
            bridged = (
                self.policy.bridge is not None and not continued and bridge is not None
                and bridge == self._bridge_key and len(self._history) >= 2
            )  # fmt: skip
            self._bridge_from = self._history[-2:] if bridged else []
            self._g_bridge_from = self._guidance[-2:] if bridged and len(self._guidance) >= 2 else []
            self._segment, self._history = segment, list(self._positive) if continued else []
            if continued:  # the steps predicted since the branch's last evaluation count on, at the branch's rate
                self._acc = self._rate(self._history) * (self._t_prev - self._history[-1][0])
            else:  # positive-branch velocities carry over only from the segment just before
                self._acc, self._skips, self._positive, self._positive_key = 0.0, 0, [], None
            self._guidance, self._g_acc, self._g_skips = [], 0.0, 0
        self._bridge_key = bridge
        decision = True
        if not last and len(self._history) >= self.policy.warmup and self._may_skip(self._skips, t, self._history):
            acc = self._acc + self._rate(self._history) * (t - self._t_prev)
            if acc < self.policy.threshold:
                self._acc, decision = acc, False
        self._t_prev = t
        entry = self._entry(combo)
        entry["evaluated" if decision else "reused"] += 1
        self.log.append((step, t, combo, "evaluate" if decision else "reuse"))
        if decision:
            self._acc, self._skips = 0.0, 0
        else:
            self._skips += 1
        return decision

    def _may_skip(self, skips: int, t: float, history: list[tuple[float, torch.Tensor]]) -> bool:
        """Within the limits: fewer than `max_skips` predicted in a row, t within `max_span` of the last evaluation."""
        if self.policy.max_skips is not None and skips >= self.policy.max_skips:
            return False
        return self.policy.max_span is None or abs(t - history[-1][0]) <= self.policy.max_span

    def _entry(self, combo: str) -> dict[str, int]:
        extra = {} if self.policy.guidance is None else {"guidance_reused": 0}
        return self.stats.setdefault(combo, {"evaluated": 0, "reused": 0, **extra})

    @staticmethod
    def _rate(history: list[tuple[float, torch.Tensor]]) -> float:
        (t0, v0), (t1, v1) = history[-2:]
        return float(torch.linalg.vector_norm(v1 - v0) / torch.linalg.vector_norm(v1).clamp_min(1e-12)) / (t1 - t0)

    @staticmethod
    def _extrapolate(history: list[tuple[float, torch.Tensor]], t: float, mode: str) -> torch.Tensor:
        (t0, v0), (t1, v1) = history[-2:]
        if mode == "reuse":
            return v1
        return v1 + (v1 - v0) * ((t - t1) / (t1 - t0))

    @property
    def reuses_guidance(self) -> bool:
        """Whether this policy may run guided steps' positive branch alone (`guidance` set)."""
        return self.policy.guidance is not None

    def evaluate_negative(self, t: float, combo: str) -> bool:
        """On a guided step the model evaluates (after `evaluate`): whether the negative branch runs too."""
        threshold = self.policy.guidance
        decision = True
        ready = len(self._guidance) >= self.policy.warmup and self._may_skip(self._g_skips, t, self._guidance)
        if threshold is not None and ready:
            acc = self._g_acc + self._rate(self._guidance) * (t - self._g_t_prev)
            if acc < threshold:
                self._g_acc, decision = acc, False
        self._g_t_prev = t
        if decision:
            self._g_acc, self._g_skips = 0.0, 0
        else:
            self._g_skips += 1
            self._entry(combo)["guidance_reused"] += 1
        self.guidance_log.append((t, combo, "both" if decision else "positive"))
        return decision

    def record_guidance(self, t: float, difference: torch.Tensor) -> None:
        """The guidance difference v_pos - v_neg of a step that ran both branches (kept: the last two)."""
        if self._g_bridge_from:
            self._guidance, self._g_bridge_from = self._bridged(self._g_bridge_from, t, difference, "guidance"), []
            return
        self._guidance = [*self._guidance[-1:], (t, difference)]

    def _bridged(
        self, before: list[tuple[float, torch.Tensor]], t: float, v: torch.Tensor, kind: str
    ) -> list[tuple[float, torch.Tensor]]:
        """The history of a new segment whose first evaluation v at t follows a patch-size switch: with the jump
        ||v - v_hat|| / ||v|| (v_hat: the segment before, extrapolated to t) within the `bridge` threshold, the new
        scale's level with the old segment's slope, [(t1, v1 + v - v_hat), (t, v)]; otherwise [(t, v)] (warm-up as
        any new segment)."""
        v_hat = self._extrapolate(before, t, "extrapolate")
        jump = float(torch.linalg.vector_norm(v - v_hat) / torch.linalg.vector_norm(v).clamp_min(1e-12))
        taken = jump <= float(self.policy.bridge)
        self.bridges.append((t, kind, self._combo, jump, taken))
        t1, v1 = before[-1]
        return [(t1, v1 + (v - v_hat)), (t, v)] if taken else [(t, v)]

    def predict_guidance(self, t: float) -> torch.Tensor:
        """The guidance difference at t from the last two full evaluations of the segment."""
        return self._extrapolate(self._guidance, t, self.policy.mode)

    def record_positive(self, t: float, v_pos: torch.Tensor, key: Hashable) -> None:
        """The positive-branch velocity of an evaluated guided step, with its `sampling.positive_key` (kept: the last
        two with that key)."""
        if key != self._positive_key:
            self._positive, self._positive_key = [], key
        self._positive = [*self._positive[-1:], (t, v_pos)]

    def record(self, t: float, v: torch.Tensor) -> None:
        """The velocity the model gave at t (kept: the last two of the segment)."""
        if self._bridge_from:
            self._history, self._bridge_from = self._bridged(self._bridge_from, t, v, "velocity"), []
            return
        self._history = [*self._history[-1:], (t, v)]

    def predict(self, t: float) -> torch.Tensor:
        """The velocity at t from the last two evaluations of the segment."""
        return self._extrapolate(self._history, t, self.policy.mode)

    @property
    def evaluations(self) -> int:
        return sum(s["evaluated"] for s in self.stats.values())

    @property
    def reused(self) -> int:
        return sum(s["reused"] for s in self.stats.values())

    @property
    def guidance_reused(self) -> int:
        """Guided steps that ran the positive branch alone."""
        return sum(s.get("guidance_reused", 0) for s in self.stats.values())

    def summary(self) -> dict[str, Any]:
        out = {"policy": self.policy.name, "threshold": self.policy.threshold, "max_span": self.policy.max_span,
               "evaluations": self.evaluations, "reused": self.reused, "per_scale": self.stats}  # fmt: skip
        if self.policy.guidance is not None:
            out.update(guidance_threshold=self.policy.guidance, guidance_reused=self.guidance_reused)
        if self.policy.bridge is not None:
            out.update(bridge_threshold=self.policy.bridge, bridges=[
                dict(t=round(t, 6), kind=kind, combo=combo, jump=round(jump, 4), taken=taken)
                for t, kind, combo, jump, taken in self.bridges])  # fmt: skip
        return out
