"""Numerical agreement: the one relative-error function, the tolerance table and the engine precisions.

Relative error is ``||out - ref|| / ||ref||`` over the whole tensor, in float64 (``||out - ref||`` when ref is 0,
infinite when the shapes differ).
"""

from __future__ import annotations

import numpy as np
import torch

PRECISIONS = ("fp32", "fp16", "bf16")  # engine precisions (`lumina-rt build --precision`; fp16 / bf16: TensorRT)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # precision name -> torch dtype

# Maximum relative error, by what is compared:
TOLERANCES: dict[str, float] = {
    # fp32 against the released code or the reference model: parity fixtures (`lumina-rt parity`) and the build's
    # ONNX Runtime check of every exported graph (`lumina-rt build --tolerance`).
    "fp32": 1e-5,
    # A whole Euler trajectory through engines against the reference sampler (errors add up over the steps), and
    # TensorRT fp32 plans (TF32 off) on a GPU against parity fixtures (tests/test_runtime.py, tests/test_export.py).
    "fp32-sampled": 1e-4,
    "tensorrt-fp32": 1e-4,
    # bf16 weights and activations (a bf16 engine, or `lumina-rt parity --precision bf16`) against the fp32 reference
    # on the parity fixtures. Public fixture on this project's CPU: 0.7-0.9e-2 for single forwards, up to 1.6e-2 for
    # the guided steps (CFG amplifies the error), the same for PyTorch's own bf16 and the C++ kernels (docs/engines.md).
    "bf16": 2e-2,
}
TOLERANCE = TOLERANCES["fp32"]

# The fused kernels' tests (tests/_kernels.py) allow, per dtype, this absolute error on top of twice the error
# PyTorch makes in the same precision (both against a float64 reference).
KERNEL_ATOL: dict[str, float] = {"fp32": 1e-5, "fp16": 1e-3, "bf16": 1e-2}


def rel_err(out: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> float:
    """||out - ref|| / ||ref|| in float64 (torch tensors on any device, or numpy arrays)."""
    a = out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
    b = ref if isinstance(ref, torch.Tensor) else torch.as_tensor(np.asarray(ref))
    a, b = a.double(), b.double()
    if a.shape != b.shape:
        return float("inf")
    denom = b.norm()
    diff = (a - b).norm()
    return float(diff / denom) if denom > 0 else float(diff)
