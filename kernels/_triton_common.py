"""Helpers shared by the Triton kernels: exact low-precision rounding and launch sizing.

Rounding: the Triton interpreter (TRITON_INTERPRET=1) truncates float32 -> bfloat16 casts instead of rounding to
nearest even, so kernels round bf16 values themselves with integer ops (`round_to`). The result is exactly
representable, so the final cast is exact both on GPU and in the interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lumina_rt.errors import BackendUnavailableError

INT32_LIMIT = 2**31 - 1


@triton.jit
def round_bf16(x):
    """float32 -> float32 rounded to the nearest-even bfloat16 value (NaN kept)."""
    u = x.to(tl.uint32, bitcast=True)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    r = u.to(tl.float32, bitcast=True)
    return tl.where(x != x, x, r)


@triton.jit
def round_to(x, dtype: tl.constexpr):
    """float32 x rounded to `dtype` precision, still float32 (a no-op for float32)."""
    if dtype == tl.bfloat16:
        x = round_bf16(x)
    elif dtype == tl.float16:
        x = x.to(tl.float16).to(tl.float32)
    return x


@triton.jit
def cast_to(x, dtype: tl.constexpr):
    """float32 x cast to `dtype` with round-to-nearest-even (also under the interpreter)."""
    return round_to(x, dtype).to(dtype)


def is_interpreted(kernel: object) -> bool:
    """True when `kernel` was decorated under TRITON_INTERPRET=1 (it then runs on CPU tensors)."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_device(kernel: object, t: torch.Tensor, name: str) -> bool:
    """Whether this launch runs in the interpreter; raises when the tensor cannot reach the kernel."""
    interp = is_interpreted(kernel)
    if not t.is_cuda and not interp:
        raise BackendUnavailableError(
            f"Triton kernels need CUDA tensors ({name} is on {t.device}), or TRITON_INTERPRET=1 set before "
            "lumina_rt.kernels is imported to run them on CPU"
        )
    return interp


def pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))
