"""Parity against fixtures made by running the released code (format: shared/fixtures/README.md).

`run_parity(fixture, target)` runs every case and returns one result per output tensor with its relative
error ||out - ref|| / ||ref|| (`lumina_rt.tolerances.rel_err`). A *parity target* computes velocities; the
reference torch model (`ModelParityTarget`, any kernel backend) and the engine runtime both provide one.
(Quality scoring of generated videos is another thing: `lumina_rt.training.evaluate`.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open

from lumina_rt.config import ModelConfig, parse_patch_combo
from lumina_rt.errors import InputError
from lumina_rt.sampling import Conditioning, SampleConfig, guided_velocity, sample_euler
from lumina_rt.tolerances import TOLERANCE, rel_err

logger = logging.getLogger(__name__)


class ParityTarget(Protocol):
    """What parity needs from a backend: velocities for a batch, and for a list of differently sized items."""

    def velocity(
        self, x: torch.Tensor, t: torch.Tensor, cap_feats: torch.Tensor, cap_mask: torch.Tensor,
        motion: torch.Tensor, combo: str,
    ) -> torch.Tensor: ...  # fmt: skip

    def forward_list(
        self, items: list[torch.Tensor], t: torch.Tensor, cap_feats: torch.Tensor, cap_mask: torch.Tensor,
        motion: torch.Tensor, combo: str,
    ) -> list[torch.Tensor]: ...  # fmt: skip


class ModelParityTarget:
    """Parity target over the reference torch model (kernel backend chosen with lumina_rt.ops).

    With `dtype` (e.g. torch.bfloat16) the model runs in that precision: latents and caption features are cast to it
    on the way in and the velocity back to float32, as a bf16 engine serves them.
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.float32):
        self.model = model.to(dtype)
        self.dtype = dtype

    def velocity(self, x, t, cap_feats, cap_mask, motion, combo):
        out = self.model.velocity(x.to(self.dtype), t, cap_feats.to(self.dtype), cap_mask, motion, combo)
        return out.float()

    def forward_list(self, items, t, cap_feats, cap_mask, motion, combo):
        pf, p = parse_patch_combo(combo)
        items = [x.to(self.dtype) for x in items]
        outs = self.model.forward_list(items, t, cap_feats.to(self.dtype), cap_mask, motion, p, pf)
        return [o.float() for o in outs]


@dataclass
class CaseResult:
    case: str
    kind: str
    rel_err: float
    passed: bool


@dataclass
class Fixture:
    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.from_kwargs(self.meta["config"], name=self.path.stem)

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k[len("model.") :]: v for k, v in self.tensors.items() if k.startswith("model.")}

    def get(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise InputError(f"fixture {str(self.path)!r} has no tensor {name!r}")
        return self.tensors[name]


def load_fixture(path: str | Path) -> Fixture:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"fixture {str(path)!r} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            meta_text = (f.metadata() or {}).get("lumina_fixture")
            tensors = {k: f.get_tensor(k) for k in f.keys()} if meta_text is not None else {}
    except Exception as exc:  # safetensors raises its own error types for every malformed file
        raise InputError(f"fixture {str(path)!r} is not a safetensors file ({type(exc).__name__})") from None
    if meta_text is None:
        raise InputError(f"{str(path)!r} has no 'lumina_fixture' metadata; is it a parity fixture?")
    return Fixture(path, json.loads(meta_text), tensors)


def _inputs(fx: Fixture, case: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Conditioning inputs of a case: `in.*` defaults, overridable per case by naming other tensors."""
    names = {"t": "in.t", "cap_feats": "in.cap_feats", "cap_mask": "in.cap_mask", "motion": "in.motion"}
    for key in list(names):
        if isinstance(case.get(key), str):
            names[key] = case[key]
    return {k: fx.get(v).clone() for k, v in names.items()}


def _sample_config(case: dict[str, Any], fallback: dict[str, Any] | None) -> dict[str, Any]:
    sc = case.get("sample_config", fallback)
    if sc is None:
        raise InputError(f"case {case.get('kind')} has no sample_config and no earlier case provides one")
    return dict(sc)


def _conditioning(inp: dict[str, torch.Tensor]) -> tuple[Conditioning, Conditioning]:
    cf, cm = inp["cap_feats"], inp["cap_mask"]
    half = cf.shape[0] // 2
    return Conditioning(cf[:half], cm[:half]), Conditioning(cf[half:], cm[half:])


def run_parity(
    fixture: Fixture,
    target: ParityTarget,
    tolerance: float = TOLERANCE,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Run every case of a fixture; returns one CaseResult per output tensor compared."""
    results: list[CaseResult] = []

    def record(name: str, kind: str, out: torch.Tensor, ref: torch.Tensor) -> None:
        err = rel_err(out, ref)
        res = CaseResult(name, kind, err, bool(err <= tolerance))
        results.append(res)
        if on_result is not None:
            on_result(res)

    last_sample_config: dict[str, Any] | None = None
    with torch.no_grad():
        for case in fixture.meta["cases"]:
            kind = case["kind"]
            inp = _inputs(fixture, case)
            if kind == "forward":
                out = target.velocity(
                    fixture.get(case["x"]), inp["t"], inp["cap_feats"], inp["cap_mask"], inp["motion"], case["patch"]
                )
                record(case["out"], kind, out, fixture.get(case["out"]))
            elif kind == "forward_list":
                items = [fixture.get(name) for name in case["x"]]
                outs = target.forward_list(
                    items, inp["t"], inp["cap_feats"], inp["cap_mask"], inp["motion"], case["patch"]
                )
                for out, name in zip(outs, case["out"]):
                    record(name, kind, out, fixture.get(name))
            elif kind == "forward_with_multi_cfg":
                last_sample_config = _sample_config(case, last_sample_config)
                sc = SampleConfig.from_dict(last_sample_config)
                z = fixture.get(case["x"])
                pos, neg = _conditioning(inp)
                b = pos.cap_feats.shape[0]
                for t, name in zip(case["t"], case["out"]):
                    t32 = float(torch.tensor(t, dtype=torch.float32))
                    guided = guided_velocity(target.velocity, z[:b], t32, pos, neg, sc)
                    ref = fixture.get(name)
                    # Row 0..b-1: guided velocity. The released step returns the negative rows unchanged.
                    record(name, kind, torch.cat([guided, z[b:]]), ref)
            elif kind == "sample_euler":
                sc_dict = _sample_config(case, last_sample_config)
                sc_dict.update(step=int(case["steps"]), ts=float(case["time_shift"]))
                sc = SampleConfig.from_dict(sc_dict)
                z = fixture.get(case["z"])
                pos, neg = _conditioning(inp)
                b = pos.cap_feats.shape[0]
                traj = sample_euler(target.velocity, z[:b], pos, neg, sc, progress=False, return_trajectory=True)
                ref = fixture.get(case["out"])
                # Only the positive rows are meaningful (the rest is the released code's unused negative slot).
                record(case["out"], kind, traj, ref[:, :b])
            else:
                raise InputError(f"unknown fixture case kind {kind!r} in {str(fixture.path)!r}")
    return results


def results_to_json(
    fixture: Fixture, backend: str, results: list[CaseResult], tolerance: float, precision: str = "fp32"
) -> str:
    return json.dumps(
        {
            "fixture": str(fixture.path),
            "backend": backend,
            "precision": precision,
            "tolerance": tolerance,
            "passed": all(r.passed for r in results),
            "max_rel_err": max((r.rel_err for r in results), default=0.0),
            "cases": [asdict(r) for r in results],
        },
        indent=2,
    )
