"""Torch engines: the reference model rebuilt from the engine directory's weight file (no checkpoint needed).

One model serves every patch size (the scales share its backbone by construction); on the CPU in fp32 its
parameters view the weight store's buffer (no copy). Engine backends (`BACKENDS`, engines/__init__.py): `torch` (the
reference math), `torch-cpu-fused` (the C++ fused ops of csrc/), `torch-triton` (CUDA, Triton fused ops),
`torch-cuda` (CUDA, PyTorch's own ops); the compiled backends (compiled_engine.py) share this model.

Where and in what a torch engine runs is one policy, `placement(precision, device)`: on CUDA the manifest's precision
(bf16 / fp16 / fp32: `lumina-rt build --target torch --precision bf16` is the GPU path without TensorRT) with
attention restricted to SDPA's fused kernels (flash, memory-efficient, cuDNN; the math fallback only for fp32);
on the CPU fp32, or bf16 for bf16 builds (only where the CPU computes bf16 natively), SDPA choosing for itself.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lumina_rt import ops
from lumina_rt.config import ModelConfig
from lumina_rt.engines.base import Backend, EngineFiles
from lumina_rt.engines.weights import WeightStore
from lumina_rt.errors import BackendUnavailableError, EngineError
from lumina_rt.model import MultiScaleNextDiT
from lumina_rt.tolerances import DTYPES

logger = logging.getLogger(__name__)


# SDPA kernels a CUDA torch engine may use: the fused ones; the math kernel (materialised scores) only where no
# fused kernel takes fp32 inputs with a mask.
CUDA_SDPA_HALF = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION)
CUDA_SDPA_FP32 = (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)
SdpaKernels = tuple[SDPBackend, ...] | None  # the SDPA kernels an engine may use (None: PyTorch's own choice)


@dataclass(frozen=True)
class Placement:
    """Where a torch engine runs: device, parameter / activation dtype, and the SDPA kernels it may use (None:
    PyTorch's own choice)."""

    device: torch.device
    dtype: torch.dtype
    sdpa: SdpaKernels


def placement(precision: str, device: str | torch.device) -> Placement:
    """The torch engines' device policy: the manifest's precision on CUDA (bf16 / fp16 / fp32) with SDPA's fused
    attention kernels; on the CPU fp32, or bf16 for bf16 builds (fp16 builds do not run on the CPU)."""
    if precision not in DTYPES:
        raise EngineError(f"unknown engine precision {precision!r}; expected one of {sorted(DTYPES)}")
    device = torch.device(device)
    if device.type == "cuda":
        dtype = DTYPES[precision]
        return Placement(device, dtype, CUDA_SDPA_FP32 if dtype == torch.float32 else CUDA_SDPA_HALF)
    return Placement(device, torch.bfloat16 if precision == "bf16" else torch.float32, None)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16 / AMX-BF16, Arm BF16): bf16 engines pay off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))


def unavailable_reason(engines: EngineFiles, backend: Backend) -> str | None:
    """None when this torch engine backend can run here (the backend table: engines/__init__.py)."""
    if backend.device == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU"
    if backend.device == "cpu" and engines.precision == "bf16" and not cpu_has_native_bf16():
        return "the engines are bf16 and this CPU has no native bf16 arithmetic (AVX512-BF16 / AMX)"
    if backend.device == "cpu" and engines.precision == "fp16":
        return "the engines are fp16, which torch engines run on CUDA only"
    if backend.kernels in ("triton", "cpu-fused"):
        try:
            ops.fused_impls(backend.kernels)
        except BackendUnavailableError as exc:
            return str(exc)
    return None


def build_model(
    config: ModelConfig, store: WeightStore, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> MultiScaleNextDiT:
    """The model with its parameters viewing the store's buffer (CPU fp32: no copy)."""
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
    return model.to(device=device, dtype=dtype).eval()


class TorchScaleEngine:
    """One patch size of a torch model shared by every scale; fused ops run with the kernel backend `kernels`."""

    def __init__(self, combo: str, model: MultiScaleNextDiT, kernels: str = "torch", sdpa: SdpaKernels = None):
        self.combo = combo
        self.model = model
        self.kernels = kernels
        self.sdpa = sdpa
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype

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
        args = [x.to(self.device) for x in (tokens, cos, sin, t, cap_feats, cap_mask, motion)]
        if self.dtype != torch.float32:  # tokens, caption and timestep in the engine precision; RoPE tables fp32
            for i in (0, 4):
                args[i] = args[i].to(self.dtype)
        attention = contextlib.nullcontext() if self.sdpa is None else sdpa_kernel(list(self.sdpa))
        with torch.no_grad(), attention:
            out = self.forward(args)
        return out.to(tokens.device, torch.float32)

    def forward(self, args: list[torch.Tensor]) -> torch.Tensor:
        """The model on engine inputs already on its device and in its precision (the compiled engine's seam)."""
        with ops.use_backend(self.kernels):
            return self.model.forward_tokens(*args, self.combo)


def shared_model(engines: EngineFiles, device: str, where: Placement) -> MultiScaleNextDiT:
    """The one model per device and precision that every torch engine backend of an engine set shares (`where`: the
    placement policy's answer for this device, asked once per engine load)."""
    return engines.shared(
        f"torch-model-{device}-{engines.precision}",
        lambda: build_model(engines.config, engines.weights(), where.device, where.dtype),
    )


def load(engines: EngineFiles, backend: Backend, combos: list[str]) -> dict[str, TorchScaleEngine]:
    """Engines for these combos over one model per device and precision, viewing the shared weight store."""
    reason = unavailable_reason(engines, backend)
    if reason:
        raise BackendUnavailableError(f"backend {backend.name!r} cannot run: {reason}")
    where = placement(engines.precision, backend.device)
    model = shared_model(engines, backend.device, where)
    return {combo: TorchScaleEngine(combo, model, backend.kernels or "torch", where.sdpa) for combo in combos}
