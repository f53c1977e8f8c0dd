"""Make parity fixtures in the format of shared/fixtures/README.md, with outputs from lumina_rt's reference model.

`make_fixture(path, config_kwargs, seed)` writes the same metadata and tensor names as the public fixture
(`model.*`, `in.*`, `out.*`; cases forward / forward_list / forward_with_multi_cfg / sample_euler), for any model
config. The outputs come from `lumina_rt.model.MultiScaleNextDiT` in float32 (not from the released code), so
such a fixture checks a backend against the reference model on configs the public fixture does not cover.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lumina_rt import ops
from lumina_rt.config import ModelConfig
from lumina_rt.model import MultiScaleNextDiT
from lumina_rt.sampling import Conditioning, SampleConfig, guided_velocity, sample_euler

BASE_CONFIG: dict[str, Any] = dict(
    in_channels=4,
    cap_feat_dim=48,
    all_patch_size=[2, 2, 4],
    all_f_patch_size=[1, 2, 2],
    rope_theta=256.0,
    t_scale=1000.0,
    motion_scale=20.0,
    multiple_of=32,
)

# Extra fixtures the engine tests use: no GQA / no QK-norm / other eps and FFN multiplier, and 3 heads on 1 KV head.
EXTRA_CONFIGS: dict[str, dict[str, Any]] = {
    "nogqa-noqknorm": dict(
        dim=128, n_layers=2, n_heads=4, n_kv_heads=None, qk_norm=False, norm_eps=1e-6, ffn_dim_multiplier=1.3,
        in_channels=3, cap_feat_dim=40, rope_theta=10000.0, t_scale=1.0, motion_scale=1.0,
        all_patch_size=[2, 4], all_f_patch_size=[1, 2],
    ),
    "dim192-3heads-1kv": dict(dim=192, n_layers=1, n_heads=3, n_kv_heads=1, qk_norm=True, multiple_of=64),
}  # fmt: skip

SAMPLE_CONFIG: dict[str, Any] = dict(cfg=[4.0, [0.5, 0.0]], motion=6.0, negMotion=[2.0, [0.25, 6.0]], renorm=2.0)


def _randomize(model: MultiScaleNextDiT, gen: torch.Generator) -> None:
    """Weights like the public fixture's: matrices ~N(0, 0.09), norm weights ~1 + N(0, 0.1), others ~N(0, 0.1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() >= 2:
                p.copy_(noise * 0.09)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("gate"):
                p.copy_(0.5 * noise - 0.5)
            else:
                p.copy_(0.1 * noise)


def _schedule(combos: list[str]) -> Any:
    """A patch schedule visiting every combo: coarse first, the first combo (finest) last."""
    order = list(reversed(combos))
    return [order[0], *[[round(0.3 * (i + 1), 2), c] for i, c in enumerate(order[1:])]]


@torch.no_grad()
def make_fixture(path: str | Path, config_kwargs: dict[str, Any], seed: int = 0) -> Path:
    """Write a fixture for the model built from BASE_CONFIG updated with `config_kwargs`; returns its path."""
    path = Path(path)
    kwargs = {**BASE_CONFIG, **config_kwargs}
    config = ModelConfig.from_kwargs(kwargs)
    gen = torch.Generator().manual_seed(seed)
    model = MultiScaleNextDiT(config).eval()
    _randomize(model, gen)
    c, d = config.in_channels, config.cap_feat_dim
    length = 8
    cap_mask = torch.zeros(2, length, dtype=torch.int64)
    cap_mask[0, :7] = 1
    cap_mask[1, :4] = 1
    tensors: dict[str, torch.Tensor] = {
        "in.cap_feats": torch.randn(2, length, d, generator=gen),
        "in.cap_mask": cap_mask,
        "in.t": torch.rand(2, generator=gen),
        "in.motion": torch.tensor([6.0, -1.0]),
        "in.x": torch.randn(2, c, 8, 16, 16, generator=gen),
        "in.image": torch.randn(2, c, 1, 32, 32, generator=gen),
        "in.list.0": torch.randn(c, 4, 8, 16, generator=gen),
        "in.list.1": torch.randn(c, 2, 16, 8, generator=gen),
        "in.z": torch.randn(2, c, 8, 16, 16, generator=gen),
    }
    cond = (tensors["in.t"], tensors["in.cap_feats"], tensors["in.cap_mask"], tensors["in.motion"])
    combos = list(config.patch_combos)
    cases: list[dict[str, Any]] = []
    with ops.use_backend("torch"):
        for src, tag in (("in.x", "forward"), ("in.image", "image")):
            for combo in combos:
                out = f"out.{tag}.{combo}"
                tensors[out] = model.velocity(tensors[src], *cond, combo)
                cases.append({"kind": "forward", "x": src, "patch": combo, "out": out})
        items = [tensors["in.list.0"], tensors["in.list.1"]]
        for combo in combos:
            pf, p = config.check_combo(combo)
            outs = model.forward_list(items, *cond, p, pf)
            names = [f"out.list.{combo}.{i}" for i in range(len(items))]
            tensors.update(zip(names, outs))
            cases.append({"kind": "forward_list", "x": ["in.list.0", "in.list.1"], "patch": combo, "out": names})

        sample = {"P": _schedule(combos), **SAMPLE_CONFIG}
        sc = SampleConfig.from_dict(sample)
        z = tensors["in.z"]
        pos = Conditioning(tensors["in.cap_feats"][:1], tensors["in.cap_mask"][:1])
        neg = Conditioning(tensors["in.cap_feats"][1:], tensors["in.cap_mask"][1:])
        times, names = [0.1, 0.45, 0.8], []
        for t in times:
            t32 = float(torch.tensor(t, dtype=torch.float32))
            name = f"out.multi_cfg.{t}"
            tensors[name] = torch.cat([guided_velocity(model.velocity, z[:1], t32, pos, neg, sc), z[1:]])
            names.append(name)
        cases.append({"kind": "forward_with_multi_cfg", "x": "in.z", "t": times, "out": names, "sample_config": sample})

        steps, shift = 6, 4.0
        traj = sample_euler(
            model.velocity, z[:1], pos, neg, sc.replace(step=steps, ts=shift), progress=False, return_trajectory=True
        )
        tensors["out.sample.trajectory"] = torch.cat([traj, z[1:].expand(steps, *z.shape[1:])[:, None]], dim=1)
        cases.append(
            {
                "kind": "sample_euler",
                "z": "in.z",
                "steps": steps,
                "time_shift": shift,
                "out": "out.sample.trajectory",
                "note": "generated by tests/_fixture_gen.py from lumina_rt's reference model; row 0 is the sample",
            }
        )
    for key, value in model.state_dict().items():
        tensors[f"model.{key}"] = value
    meta = {"variant": f"generated-seed{seed}", "config": config.to_kwargs(), "cases": cases, "patch_combos": combos}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().float() if v.is_floating_point() else v.contiguous() for k, v in tensors.items()},
        str(path),
        metadata={"lumina_fixture": json.dumps(meta)},
    )
    return path
