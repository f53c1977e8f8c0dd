"""Helpers of the kernel tests (tests/test_kernel_*.py): implementations under test and the tolerance rule."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest
import torch

from lumina_rt.tolerances import KERNEL_ATOL

# (dtype, atol) together: the atol is added to the rule "kernel error <= 2 x same-precision PyTorch error"
DTYPES = [
    pytest.param(torch.float32, KERNEL_ATOL["fp32"], id="fp32"),
    pytest.param(torch.float16, KERNEL_ATOL["fp16"], id="fp16"),
    pytest.param(torch.bfloat16, KERNEL_ATOL["bf16"], id="bf16"),
]

# triton: the Triton kernels (interpreted on CPU); cpp: the C++ extension with the row kernels of its default ISA (the
# best this CPU runs); cpp-portable: the C++ extension with its portable (auto-vectorised) row kernels.
# tests/test_cpu_isa.py runs every ISA.
IMPLS = ["triton", "cpp", "cpp-portable"]


def load_impl(name: str, triton_module: str) -> ModuleType:
    """The module holding the op launchers of implementation `name` (C++: fails, never skips, when not built)."""
    if name == "triton":
        return importlib.import_module(f"lumina_rt.kernels.{triton_module}")
    try:
        from lumina_rt.kernels import cpu
    except ImportError as exc:
        pytest.fail(f"the C++ extension lumina_rt._C is not built ({exc}); run `pip install -e . --no-build-isolation`")
    return cpu


@pytest.fixture(params=IMPLS)
def impl_name(request, monkeypatch):
    """Implementation under test; outputs are NaN-poisoned so unwritten elements fail the comparison."""
    from lumina_rt.kernels import _common

    monkeypatch.setattr(_common, "POISON_OUTPUTS", True)
    name = request.param
    if name == "cpp-portable":
        load_impl("cpp", "")  # fails with a clear message when the extension is not built
        from lumina_rt import _C

        previous = _C.isa()
        _C.set_isa("portable")
        yield name
        _C.set_isa(previous)
    else:
        yield name


def device_for(impl: str) -> torch.device:
    """Triton runs on CUDA when there is one (else interpreted on CPU); the C++ ops run on CPU."""
    return torch.device("cuda" if impl == "triton" and torch.cuda.is_available() else "cpu")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    diff = (out.detach().cpu().double() - ref.double()).abs()
    assert not torch.isnan(diff).any(), "output has NaN (an element not written, or a NaN computed)"
    return float(diff.max()) if diff.numel() else 0.0


def check_rule(out: torch.Tensor, ref64: torch.Tensor, same_precision: torch.Tensor, atol: float, what: str) -> None:
    """Kernel error against the float64 reference is at most twice PyTorch's own error at the same precision."""
    assert out.dtype == same_precision.dtype, f"{what}: dtype {out.dtype}, PyTorch gives {same_precision.dtype}"
    err, torch_err = max_err(out, ref64), max_err(same_precision, ref64)
    assert err <= 2 * torch_err + atol, f"{what}: kernel error {err:.3g} > 2 x torch error {torch_err:.3g} + {atol:g}"
