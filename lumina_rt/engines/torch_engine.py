"""Torch engines: the reference model rebuilt from the engine directory's weight file (no checkpoint needed).

One model serves every patch size (the scales share its backbone by construction). Kernel backend: "torch"
(reference math) on CPU, "triton" on CUDA (backend name "torch-triton").
"""

from __future__ import annotations

import logging
import warnings

import torch

from lumina_rt import ops
from lumina_rt.config import ModelConfig
from lumina_rt.engines.weights import WeightStore
from lumina_rt.errors import BackendUnavailableError, EngineError
from lumina_rt.model import MultiScaleNextDiT

logger = logging.getLogger(__name__)


def triton_unavailable_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    try:
        ops._fused_impls("triton")
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def build_model(config: ModelConfig, store: WeightStore, device: str | torch.device = "cpu") -> MultiScaleNextDiT:
    """The model with its parameters viewing the store's buffer (CPU: no copy)."""
    with torch.device("meta"):
        model = MultiScaleNextDiT(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # from_numpy on a shared buffer
        state = {key: torch.from_numpy(store.param(key)) for key in store.params}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise EngineError(f"the weight store {str(store.path)!r} does not fit the manifest's config: {exc}") from None
    model.check_inputs = False
    return model.to(device).eval()


class TorchScaleEngine:
    """One patch size of a shared torch model."""

    def __init__(self, combo: str, model: MultiScaleNextDiT, kernel_backend: str = "torch"):
        self.combo = combo
        self.model = model
        self.kernel_backend = kernel_backend

    def run(
        self,
        tokens: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion: torch.Tensor,
        profile_index: int = 0,
    ) -> torch.Tensor:
        device = next(self.model.parameters()).device
        args = [x.to(device) for x in (tokens, cos, sin, t, cap_feats, cap_mask, motion)]
        with ops.use_backend(self.kernel_backend), torch.no_grad():
            out = self.model.forward_tokens(*args, self.combo)
        return out.to(tokens.device)


def load(config: ModelConfig, combos: list[str], store: WeightStore, cuda: bool = False) -> dict[str, TorchScaleEngine]:
    if cuda:
        reason = triton_unavailable_reason()
        if reason:
            raise BackendUnavailableError(f"backend 'torch-triton' cannot run: {reason}")
    model = build_model(config, store, "cuda" if cuda else "cpu")
    backend = "triton" if cuda else "torch"
    return {combo: TorchScaleEngine(combo, model, backend) for combo in combos}
