"""Triton implementations of the fused ops, by the op names of `lumina_rt.ops` (same signatures as its torch impls)."""

from __future__ import annotations

from collections.abc import Callable

from .modulate import gated_residual, layernorm_modulate, rmsnorm_modulate
from .patchify import patchify, unpatchify
from .rope import rope_qk, rope_qk_layernorm

TRITON_IMPLS: dict[str, Callable] = {
    "rmsnorm_modulate": rmsnorm_modulate,
    "gated_residual": gated_residual,
    "layernorm_modulate": layernorm_modulate,
    "rope_qk": rope_qk,
    "rope_qk_layernorm": rope_qk_layernorm,
    "patchify": patchify,
    "unpatchify": unpatchify,
}
