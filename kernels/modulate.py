"""Fused norm + adaLN modulation ops of the Next-DiT block (one family, one file).

- ``rmsnorm_modulate(x, weight, scale, eps) = RMSNorm(x) * weight * (1 + scale[b])``
- ``gated_residual(x, y, weight, gate, eps) = x + tanh(gate[b]) * RMSNorm(y) * weight``
- ``layernorm_modulate(x, scale, eps) = LayerNorm(x, no affine) * (1 + scale[b])``

As in the released model, the normalised value is rounded to the input dtype before the multiplications; the
rest is float32 with one rounding at the store. Each kernel program handles one batch index and a block of rows,
so weight and modulation vectors are read once per block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_gated_residual, check_layernorm_modulate, check_rmsnorm_modulate, new_output, result_dtype
from ._triton_common import INT32_LIMIT, cast_to, check_device, pow2, round_to

# ----------------------------------------------------------------------------------------------
# Reference math (pure PyTorch; float64 inputs are computed in float64)
# ----------------------------------------------------------------------------------------------


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _rms_normalize_ref(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) in float32 (float64 for float64 x), rounded to x's dtype."""
    xf = x.to(_acc(x))
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rmsnorm_modulate_ref(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """x [B, N, D], weight [D], scale [B, D] -> [B, N, D] in the promoted dtype of the inputs."""
    out_dtype = result_dtype(x, weight, scale)
    acc = torch.promote_types(out_dtype, torch.float32)
    xn = _rms_normalize_ref(x, eps).to(acc)
    return (xn * weight.to(acc) * (1.0 + scale.to(acc))[:, None, :]).to(out_dtype)


def gated_residual_ref(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, gate: torch.Tensor, eps: float
) -> torch.Tensor:
    """x, y [B, N, D], weight [D], gate [B, D] -> x + tanh(gate[b]) * RMSNorm(y) * weight, [B, N, D]."""
    out_dtype = result_dtype(x, y, weight, gate)
    acc = torch.promote_types(out_dtype, torch.float32)
    yn = _rms_normalize_ref(y, eps).to(acc)
    return (x.to(acc) + torch.tanh(gate.to(acc))[:, None, :] * yn * weight.to(acc)).to(out_dtype)


def layernorm_modulate_ref(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """x [B, N, D], scale [B, D] -> LayerNorm(x) (biased variance, no affine) * (1 + scale[b]), [B, N, D]."""
    out_dtype = result_dtype(x, scale)
    acc = torch.promote_types(out_dtype, torch.float32)
    xf = x.to(_acc(x))
    mean = xf.mean(-1, keepdim=True)
    var = (xf - mean).pow(2).mean(-1, keepdim=True)
    xn = ((xf - mean) * torch.rsqrt(var + eps)).to(x.dtype).to(acc)
    return (xn * (1.0 + scale.to(acc))[:, None, :]).to(out_dtype)


# ----------------------------------------------------------------------------------------------
# Kernels: program (b, block of rows); tile [ROWS, BLOCK_D], ITERS tiles per program
# ----------------------------------------------------------------------------------------------


@triton.jit
def _rmsnorm_tile(ptr, base, rows, stride_n, cols, mask, D, eps):
    """A [ROWS, BLOCK_D] tile of rows RMS-normalised in float32, rounded to the tensor's dtype (as the reference)."""
    v = tl.load(ptr + base + rows[:, None] * stride_n + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(v * v, axis=1) / D + eps)
    return round_to(v * rstd[:, None], ptr.dtype.element_ty)


@triton.jit
def _rmsnorm_modulate_kernel(
    x_ptr, w_ptr, s_ptr, out_ptr,
    N, D, eps,
    stride_xb, stride_xn, stride_sb,
    ROWS: tl.constexpr, ITERS: tl.constexpr, BLOCK_D: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    blk = tl.program_id(1)
    if I64:
        b = b.to(tl.int64)
        blk = blk.to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + b * stride_sb + cols, mask=cmask, other=0.0).to(tl.float32)
    coef = (w * (1.0 + s))[None, :]
    for it in range(ITERS):
        rows = (blk * ITERS + it) * ROWS + tl.arange(0, ROWS)
        mask = (rows < N)[:, None] & cmask[None, :]
        xn = _rmsnorm_tile(x_ptr, b * stride_xb, rows, stride_xn, cols, mask, D, eps)
        out = cast_to(xn * coef, out_ptr.dtype.element_ty)
        tl.store(out_ptr + (b * N + rows[:, None]) * D + cols[None, :], out, mask=mask)


@triton.jit
def _tanh(g):
    """float32 tanh from exp (core Triton has none): odd series near 0, (1 - e) / (1 + e) with e = exp(-2|g|) else."""
    a = tl.abs(g)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    g2 = g * g
    small = a * (1.0 + g2 * (-1.0 / 3.0 + g2 * (2.0 / 15.0 + g2 * (-17.0 / 315.0))))
    t = tl.where(a < 0.125, small, big)
    return tl.where(g < 0, -t, t)


@triton.jit
def _gated_residual_kernel(
    x_ptr, y_ptr, w_ptr, g_ptr, out_ptr,
    N, D, eps,
    stride_xb, stride_xn, stride_yb, stride_yn, stride_gb,
    ROWS: tl.constexpr, ITERS: tl.constexpr, BLOCK_D: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    blk = tl.program_id(1)
    if I64:
        b = b.to(tl.int64)
        blk = blk.to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + b * stride_gb + cols, mask=cmask, other=0.0).to(tl.float32)
    coef = (_tanh(g) * w)[None, :]
    for it in range(ITERS):
        rows = (blk * ITERS + it) * ROWS + tl.arange(0, ROWS)
        mask = (rows < N)[:, None] & cmask[None, :]
        yn = _rmsnorm_tile(y_ptr, b * stride_yb, rows, stride_yn, cols, mask, D, eps)
        x = tl.load(x_ptr + b * stride_xb + rows[:, None] * stride_xn + cols[None, :], mask=mask, other=0.0)
        out = cast_to(x.to(tl.float32) + yn * coef, out_ptr.dtype.element_ty)
        tl.store(out_ptr + (b * N + rows[:, None]) * D + cols[None, :], out, mask=mask)


@triton.jit
def _layernorm_modulate_kernel(
    x_ptr, s_ptr, out_ptr,
    N, D, eps,
    stride_xb, stride_xn, stride_sb,
    ROWS: tl.constexpr, ITERS: tl.constexpr, BLOCK_D: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    blk = tl.program_id(1)
    if I64:
        b = b.to(tl.int64)
        blk = blk.to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    s = tl.load(s_ptr + b * stride_sb + cols, mask=cmask, other=0.0).to(tl.float32)
    mod = (1.0 + s)[None, :]
    for it in range(ITERS):
        rows = (blk * ITERS + it) * ROWS + tl.arange(0, ROWS)
        mask = (rows < N)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + b * stride_xb + rows[:, None] * stride_xn + cols[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = tl.rsqrt(tl.sum(xc * xc, axis=1) / D + eps)
        xn = round_to(xc * rstd[:, None], x_ptr.dtype.element_ty)
        out = cast_to(xn * mod, out_ptr.dtype.element_ty)
        tl.store(out_ptr + (b * N + rows[:, None]) * D + cols[None, :], out, mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _rows_last_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Keep batch/token strides (slices are fine) but make the feature dim contiguous."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _launch_config(n: int, d: int, interpret: bool) -> tuple[int, int, int, int]:
    """(ROWS, ITERS, BLOCK_D, num_warps) for rows of width d."""
    block_d = pow2(d)
    if interpret:  # the interpreter pays per program: big 2-D tiles (~256K elements)
        rows = max(1, min(pow2(n), (1 << 18) // block_d))
        return rows, 1, block_d, 4
    num_warps = 4 if block_d <= 2048 else (8 if block_d <= 8192 else 16)
    rows = max(1, 2048 // block_d)  # small rows: several per tile
    iters = 4 if n >= 4096 else 1  # amortise the weight / modulation loads over several tiles
    return rows, iters, block_d, num_warps


def rmsnorm_modulate(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(x) * weight * (1 + scale[b]).

    x: [B, N, D] float32 / float16 / bfloat16 (feature dim contiguous; other strides allowed).
    weight: [D], scale: [B, D], any of those float dtypes.
    Returns a new contiguous [B, N, D] tensor in the promoted dtype of (x, weight, scale).
    """
    eps = check_rmsnorm_modulate(x, weight, scale, eps)
    interp = check_device(_rmsnorm_modulate_kernel, x, "x")
    b, n, d = x.shape
    out = new_output((b, n, d), result_dtype(x, weight, scale), x.device)
    if out.numel() == 0:
        return out
    x = _rows_last_contiguous(x)
    weight, scale = weight.contiguous(), scale.contiguous()
    rows, iters, block_d, num_warps = _launch_config(n, d, interp)
    grid = (b, triton.cdiv(n, rows * iters))
    _rmsnorm_modulate_kernel[grid](
        x, weight, scale, out, n, d, eps, x.stride(0), x.stride(1), scale.stride(0),
        ROWS=rows, ITERS=iters, BLOCK_D=block_d, I64=max(out.numel(), x.stride(0) * b) > INT32_LIMIT,
        num_warps=num_warps,
    )  # fmt: skip
    return out


def gated_residual(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, gate: torch.Tensor, eps: float
) -> torch.Tensor:
    """x + tanh(gate[b]) * RMSNorm(y) * weight.

    x, y: [B, N, D] float32 / float16 / bfloat16 (feature dim contiguous); weight: [D]; gate: [B, D].
    Returns a new contiguous [B, N, D] tensor in the promoted dtype of (x, y, weight, gate).
    """
    eps = check_gated_residual(x, y, weight, gate, eps)
    interp = check_device(_gated_residual_kernel, x, "x")
    b, n, d = x.shape
    out = new_output((b, n, d), result_dtype(x, y, weight, gate), x.device)
    if out.numel() == 0:
        return out
    x, y = _rows_last_contiguous(x), _rows_last_contiguous(y)
    weight, gate = weight.contiguous(), gate.contiguous()
    rows, iters, block_d, num_warps = _launch_config(n, d, interp)
    grid = (b, triton.cdiv(n, rows * iters))
    i64 = max(out.numel(), x.stride(0) * b, y.stride(0) * b) > INT32_LIMIT
    _gated_residual_kernel[grid](
        x, y, weight, gate, out, n, d, eps, x.stride(0), x.stride(1), y.stride(0), y.stride(1), gate.stride(0),
        ROWS=rows, ITERS=iters, BLOCK_D=block_d, I64=i64, num_warps=num_warps,
    )  # fmt: skip
    return out


def layernorm_modulate(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm(x) (no affine) * (1 + scale[b]).

    x: [B, N, D] float32 / float16 / bfloat16 (feature dim contiguous); scale: [B, D].
    Returns a new contiguous [B, N, D] tensor in the promoted dtype of (x, scale).
    """
    eps = check_layernorm_modulate(x, scale, eps)
    interp = check_device(_layernorm_modulate_kernel, x, "x")
    b, n, d = x.shape
    out = new_output((b, n, d), result_dtype(x, scale), x.device)
    if out.numel() == 0:
        return out
    x = _rows_last_contiguous(x)
    scale = scale.contiguous()
    rows, iters, block_d, num_warps = _launch_config(n, d, interp)
    grid = (b, triton.cdiv(n, rows * iters))
    _layernorm_modulate_kernel[grid](
        x, scale, out, n, d, eps, x.stride(0), x.stride(1), scale.stride(0),
        ROWS=rows, ITERS=iters, BLOCK_D=block_d, I64=max(out.numel(), x.stride(0) * b) > INT32_LIMIT,
        num_warps=num_warps,
    )  # fmt: skip
    return out
