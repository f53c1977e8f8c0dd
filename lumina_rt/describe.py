"""Describe a model size or checkpoint without allocating its weights (meta device)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lumina_rt.config import MODEL_SIZES, ModelConfig
from lumina_rt.errors import ConfigError
from lumina_rt.model import MultiScaleNextDiT


def describe(config: ModelConfig) -> dict[str, Any]:
    """Config, derived sizes, parameter count and state-dict shapes of a model built on the meta device."""
    with torch.device("meta"):
        model = MultiScaleNextDiT(config)
    state = model.state_dict()
    return {
        "name": config.name,
        "config": config.to_kwargs(),
        "derived": {
            "head_dim": config.head_dim,
            "kv_heads": config.kv_heads,
            "ffn_hidden": config.ffn_hidden,
            "adaln_dim": config.adaln_dim,
            "rope_dims": list(config.rope_dims),
            "patch_combos": list(config.patch_combos),
        },
        "parameters": sum(t.numel() for t in state.values()),
        "state_dict": {k: list(v.shape) for k, v in state.items()},
    }


def describe_target(target: str) -> dict[str, Any]:
    """`describe` of a model size name or a checkpoint directory (either layout)."""
    if Path(target).is_dir():
        from lumina_rt.checkpoint import load_config

        return describe(load_config(target))
    if target in MODEL_SIZES:
        return describe(ModelConfig.from_name(target))
    raise ConfigError(
        f"{target!r} is neither a model size ({', '.join(sorted(MODEL_SIZES))}) nor a checkpoint directory"
    )
