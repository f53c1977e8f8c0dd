"""The fused-op boundary of the model: every elementwise stage that lumina_rt fuses goes through here.

The model calls these functions; which implementation runs is one switch (`set_backend`):

- ``"torch"``: plain PyTorch, the reference math (default; exports to ONNX, runs anywhere);
- ``"triton"``: Triton kernels from ``lumina_rt.kernels`` (GPU, or CPU with ``TRITON_INTERPRET=1``);
- ``"cpu-fused"``: the C++ extension ``lumina_rt._C`` (pybind11 + OpenMP);
- ``"auto"``: triton for CUDA tensors, cpu-fused for CPU tensors when built, else torch.

The fused kernels are inference-only: while autograd is recording (grad mode on), the torch math runs.

Shapes used below: B batch, N tokens, D model width, Hq / Hk query / key heads, Dh head dim.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from lumina_rt.config import token_grid
from lumina_rt.errors import BackendUnavailableError
from lumina_rt.kernels.attention import gated_attention_sdpa
from lumina_rt.kernels.attention import repeat_kv as repeat_kv

logger = logging.getLogger(__name__)

KERNEL_BACKENDS = ("torch", "triton", "cpu-fused", "auto")
_backend = "torch"


# ----------------------------------------------------------------------------------------------
# Reference math (PyTorch). Kept minimal and export-friendly: no complex or float64 tensors.
# ----------------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as released: normalise in float32, cast back, then multiply by the weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def _rmsnorm_modulate_torch(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    return rms_norm(x, weight, eps) * (1.0 + scale).unsqueeze(1)


def _gated_residual_torch(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, gate: torch.Tensor, eps: float
) -> torch.Tensor:
    return x + gate.tanh().unsqueeze(1) * rms_norm(y, weight, eps)


def _layernorm_modulate_torch(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=eps) * (1.0 + scale).unsqueeze(1)


def rope_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [B, N, H, Dh] by angles with cos/sin [N|B,N, Dh/2]."""
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [B|1, N, 1, Dh/2]
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def _rope_qk_torch(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return rope_rotate(q, cos, sin), rope_rotate(k, cos, sin)


def _rope_qk_layernorm_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q_w: torch.Tensor,
    q_b: torch.Tensor,
    k_w: torch.Tensor,
    k_b: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    def norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.flatten(2), (x.shape[2] * x.shape[3],), w, b, eps).view(x.shape)

    return _rope_qk_torch(norm(q, q_w, q_b), norm(k, k_w, k_b), cos, sin)


def _patchify_torch(x: torch.Tensor, pf: int, ph: int, pw: int) -> torch.Tensor:
    b, c, f, h, w = x.shape
    if f == 1 and pf > 1:
        x = x.repeat(1, 1, pf, 1, 1)
    ft, ht, wt = token_grid(f, h, w, pf, ph, pw)
    x = x.reshape(b, c, ft, pf, ht, ph, wt, pw)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b f h w pf ph pw c
    return x.reshape(b, ft * ht * wt, pf * ph * pw * c)


def _unpatchify_torch(
    tokens: torch.Tensor, frames: int, height: int, width: int, pf: int, ph: int, pw: int
) -> torch.Tensor:
    b, _, feat = tokens.shape
    c = feat // (pf * ph * pw)
    grid = token_grid(frames, height, width, pf, ph, pw)
    x = tokens.reshape(b, *grid, pf, ph, pw, c)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # b c f pf h ph w pw
    return x.reshape(b, c, grid[0] * pf, height, width)[:, :, :frames]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention [B, H, N, Dh]; under CPU bf16 autocast (mixed-precision training) in float32.

    PyTorch's CPU flash-attention backward is ~4x slower in bf16 than in fp32 at these sizes (measured on the
    built-in model's training step), while the linear layers gain ~3x from bf16: keep the attention in fp32.
    Inside a compiled mixed-precision step it is written out as matmul-softmax-matmul (`attention_math`), which
    inductor fuses with its neighbours: the built-in model's compiled training step is 1.16x faster than with the
    SDPA kernel (docs/training.md).
    """
    if torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            if torch.compiler.is_compiling():
                return attention_math(q.float(), k.float(), v.float(), mask)
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v, the SDPA math; `mask` is boolean (True = attend)."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def _gated_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    x_mask: torch.Tensor | None,
    yk: torch.Tensor,
    yv: torch.Tensor,
    y_mask: torch.Tensor,
    gate: torch.Tensor,
) -> torch.Tensor:
    return gated_attention_sdpa(q, k, v, x_mask, yk, yv, y_mask, gate, sdpa=sdpa)


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------

# The reference (PyTorch) implementation of every fused op, by op name.
TORCH_IMPLS: dict[str, Callable] = {
    "rmsnorm_modulate": _rmsnorm_modulate_torch,
    "gated_residual": _gated_residual_torch,
    "layernorm_modulate": _layernorm_modulate_torch,
    "rope_qk": _rope_qk_torch,
    "rope_qk_layernorm": _rope_qk_layernorm_torch,
    "patchify": _patchify_torch,
    "unpatchify": _unpatchify_torch,
    "gated_attention": _gated_attention_torch,
}


def fused_impls(name: str) -> dict[str, Callable]:
    """Implementation table of a fused backend; raises BackendUnavailableError when it cannot run."""
    if name == "triton":
        try:
            from lumina_rt.kernels import registry
        except ImportError as exc:  # triton not installed
            raise BackendUnavailableError(f"backend 'triton' needs the triton package: {exc}") from exc
        return registry.TRITON_IMPLS
    if name == "cpu-fused":
        try:
            from lumina_rt.kernels import cpu
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend 'cpu-fused' needs the C++ extension lumina_rt._C (built by `pip install .`): {exc}"
            ) from exc
        return cpu.CPU_IMPLS
    raise BackendUnavailableError(f"unknown kernel backend {name!r}; choose one of {KERNEL_BACKENDS}")


def available_backends() -> list[str]:
    """Kernel backends that can run in this process."""
    names = ["torch"]
    for name in ("triton", "cpu-fused"):
        try:
            fused_impls(name)
            names.append(name)
        except BackendUnavailableError:
            pass
    return names


def set_backend(name: str) -> None:
    """Select the kernel backend for all subsequent model calls (see module docstring)."""
    global _backend
    if name not in KERNEL_BACKENDS:
        raise BackendUnavailableError(f"unknown kernel backend {name!r}; choose one of {KERNEL_BACKENDS}")
    if name in ("triton", "cpu-fused"):
        fused_impls(name)  # fail now, not in the middle of a forward
    _backend = name
    logger.debug("kernel backend set to %s", name)


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager form of `set_backend`."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


@contextlib.contextmanager
def replace_torch_impl(op: str, fn: Callable) -> Iterator[None]:
    """Run `fn` as the PyTorch implementation of `op` inside the block (the ONNX exporter's attention form)."""
    previous = TORCH_IMPLS[op]
    TORCH_IMPLS[op] = fn
    try:
        yield
    finally:
        TORCH_IMPLS[op] = previous


def tracing() -> bool:
    """True while the model is being traced, exported to ONNX or compiled: no host syncs, no data-dependent checks."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _impl(op: str, like: torch.Tensor) -> Callable:
    backend = _backend
    # The fused kernels have no backward: whenever autograd records (training), use the torch math.
    if backend == "torch" or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return TORCH_IMPLS[op]
    if backend == "auto":
        if like.is_cuda:
            backend = "triton"
        else:
            backend = "cpu-fused"
        try:
            return fused_impls(backend).get(op, TORCH_IMPLS[op])
        except BackendUnavailableError:
            return TORCH_IMPLS[op]
    return fused_impls(backend).get(op, TORCH_IMPLS[op])


# ----------------------------------------------------------------------------------------------
# Public ops
# ----------------------------------------------------------------------------------------------


def rmsnorm_modulate(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(x) * weight * (1 + scale[b]).  x [B, N, D]; weight [D]; scale [B, D]."""
    return _impl("rmsnorm_modulate", x)(x, weight, scale, eps)


def gated_residual(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, gate: torch.Tensor, eps: float
) -> torch.Tensor:
    """Sandwich residual x + tanh(gate[b]) * RMSNorm(y) * weight.  x, y [B, N, D]; weight [D]; gate [B, D]."""
    return _impl("gated_residual", x)(x, y, weight, gate, eps)


def layernorm_modulate(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Final layer: LayerNorm(x) (no affine) * (1 + scale[b]).  x [B, N, D]; scale [B, D]."""
    return _impl("layernorm_modulate", x)(x, scale, eps)


def rope_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D RoPE on q [B, N, Hq, Dh] and k [B, N, Hk, Dh] with float32 tables cos/sin [N, Dh/2] or [B, N, Dh/2]."""
    return _impl("rope_qk", q)(q, k, cos, sin)


def rope_qk_layernorm(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q_w: torch.Tensor,
    q_b: torch.Tensor,
    k_w: torch.Tensor,
    k_b: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """QK-LayerNorm (weights [Hq*Dh] / [Hk*Dh], over each token's whole row) then 3D RoPE, as `rope_qk`."""
    return _impl("rope_qk_layernorm", q)(q, k, cos, sin, q_w, q_b, k_w, k_b, eps)


def patchify(x: torch.Tensor, pf: int, ph: int, pw: int) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, N, pf*ph*pw*C]; tokens in (f h w) order, features in (pf ph pw c) order.

    F = 1 (an image) is repeated to pf frames first.
    """
    return _impl("patchify", x)(x, pf, ph, pw)


def unpatchify(tokens: torch.Tensor, frames: int, height: int, width: int, pf: int, ph: int, pw: int) -> torch.Tensor:
    """Inverse of `patchify`: [B, N, pf*ph*pw*C] -> [B, C, frames, height, width] (images cropped back to F = 1)."""
    return _impl("unpatchify", tokens)(tokens, frames, height, width, pf, ph, pw)


def gated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    x_mask: torch.Tensor | None,
    yk: torch.Tensor,
    yv: torch.Tensor,
    y_mask: torch.Tensor,
    gate: torch.Tensor,
) -> torch.Tensor:
    """Self-attention plus tanh-gated cross-attention of one block -> [B, N, Hq*Dh] (the output projection's input).

    q [B, N, Hq, Dh]; k, v [B, N, Hk, Dh] (GQA: query head h reads key / value head h // (Hq / Hk)); x_mask [B, N]
    bool (True = attend) or None; yk, yv [B, L, Hk, Dh] the caption's keys / values; y_mask [B, L] bool; gate [Hq]:
    out = softmax(q k^T / sqrt(Dh) + mask) v + tanh(gate) * softmax(q yk^T / sqrt(Dh) + y_mask) yv.
    """
    with torch.profiler.record_function("lumina_rt.gated_attention"):
        return _impl("gated_attention", q)(q, k, v, x_mask, yk, yv, y_mask, gate)
