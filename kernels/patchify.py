"""Patch embedding layout: latent video [B, C, F, H, W] <-> tokens [B, N, pf*ph*pw*C] in one pass each way.

Tokens are in (f h w) order and features in (pf ph pw c) order. An image (F = 1) with pf > 1 is read as pf copies
of its frame through a zero frame stride (no copy); `unpatchify` of an image keeps frame 0 only. Each program moves
a [C, block of H*W] tile of the latent: reads (patchify) or writes (unpatchify) contiguous runs of each
(b, c, f) plane.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_patchify, check_unpatchify, new_output
from ._triton_common import INT32_LIMIT, check_device, pow2

# ----------------------------------------------------------------------------------------------
# Reference math (pure PyTorch)
# ----------------------------------------------------------------------------------------------


def patchify_ref(x: torch.Tensor, pf: int, ph: int, pw: int) -> torch.Tensor:
    """x [B, C, F, H, W] -> [B, (F/pf)(H/ph)(W/pw), pf*ph*pw*C]; F = 1 is repeated to pf frames first."""
    b, c, f, h, w = x.shape
    if f == 1 and pf > 1:
        x = x.expand(b, c, pf, h, w)
        f = pf
    x = x.reshape(b, c, f // pf, pf, h // ph, ph, w // pw, pw)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (f // pf) * (h // ph) * (w // pw), pf * ph * pw * c)


def unpatchify_ref(
    tokens: torch.Tensor, frames: int, height: int, width: int, pf: int, ph: int, pw: int
) -> torch.Tensor:
    """tokens [B, N, pf*ph*pw*C] -> [B, C, frames, height, width] (for frames = 1 the pf computed frames are
    cropped to the first)."""
    b, _, feat = tokens.shape
    c = feat // (pf * ph * pw)
    f = pf if frames == 1 else frames
    x = tokens.reshape(b, f // pf, height // ph, width // pw, pf, ph, pw, c)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, c, f, height, width)
    return x[:, :, :frames].contiguous()


def token_positions(
    f_tokens: int, h_tokens: int, w_tokens: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """int32 [f_tokens*h_tokens*w_tokens, 3]: the (f, h, w) token-grid index of each token, in patchify order."""
    f = torch.arange(f_tokens, dtype=torch.int32, device=device)
    h = torch.arange(h_tokens, dtype=torch.int32, device=device)
    w = torch.arange(w_tokens, dtype=torch.int32, device=device)
    return torch.stack(torch.meshgrid(f, h, w, indexing="ij"), dim=-1).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------
# Kernels: program (b * frames + f, block of the flattened H*W plane), tile [C_PAD, BLOCK_HW]. The latent plane of
# one (b, c, f) is contiguous, so the latent side of each move is one contiguous run per channel (vector loads /
# stores); W is a constexpr so h = hw // W and w = hw % W are multiply-shifts.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _patch_index(f, hw, cs, C, Ht, Wt, W: tl.constexpr, PF: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr):
    """(token, feature) of latent positions (c, f, h*W + w) (f scalar; cs and hw broadcastable)."""
    hs = hw // W
    ws = hw % W
    tok = ((f // PF) * Ht + hs // PH) * Wt + ws // PW
    feat = (((f % PF) * PH + hs % PH) * PW + ws % PW) * C + cs
    return tok, feat


@triton.jit
def _patchify_kernel(
    x_ptr, out_ptr,
    C, FC, HW, N, Ht, Wt,
    sxb, sxc, sxf,
    W: tl.constexpr, PF: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    C_PAD: tl.constexpr, BLOCK_HW: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    if I64:
        pid = pid.to(tl.int64)
    b = pid // FC
    f = pid % FC
    cs = tl.arange(0, C_PAD)[:, None]
    hw = (tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW))[None, :]
    mask = (cs < C) & (hw < HW)
    v = tl.load(x_ptr + b * sxb + f * sxf + cs * sxc + hw, mask=mask)
    tok, feat = _patch_index(f, hw, cs, C, Ht, Wt, W, PF, PH, PW)
    tl.store(out_ptr + (b * N + tok) * (PF * PH * PW * C) + feat, v, mask=mask)


@triton.jit
def _unpatchify_kernel(
    t_ptr, out_ptr,
    C, FRAMES, HW, Ht, Wt,
    stb, stn,
    W: tl.constexpr, PF: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    C_PAD: tl.constexpr, BLOCK_HW: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    if I64:
        pid = pid.to(tl.int64)
    b = pid // FRAMES
    f = pid % FRAMES
    cs = tl.arange(0, C_PAD)[:, None]
    hw = (tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW))[None, :]
    mask = (cs < C) & (hw < HW)
    tok, feat = _patch_index(f, hw, cs, C, Ht, Wt, W, PF, PH, PW)
    v = tl.load(t_ptr + b * stb + tok * stn + feat, mask=mask)
    tl.store(out_ptr + ((b * C + cs) * FRAMES + f) * HW + hw, v, mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _tile(c: int, hw: int, interpret: bool) -> tuple[int, int, int]:
    """(C_PAD, BLOCK_HW, num_warps) for [C, H*W] planes."""
    c_pad = pow2(c)
    if interpret:  # big tiles: the interpreter pays per program
        return c_pad, max(1, min(pow2(hw), (1 << 17) // c_pad)), 4
    return c_pad, max(16, min(pow2(hw), 4096 // c_pad)), 4


def patchify(x: torch.Tensor, pf: int, ph: int, pw: int) -> torch.Tensor:
    """Latent to tokens.

    x: [B, C, F, H, W] float32 / float16 / bfloat16, any strides; F a multiple of pf or 1 (an image, repeated to pf
    frames); H, W multiples of ph, pw.
    Returns a new contiguous [B, (F/pf)(H/ph)(W/pw), pf*ph*pw*C] tensor of x's dtype (tokens in (f h w) order,
    features in (pf ph pw c) order).
    """
    f_compute = check_patchify(x, pf, ph, pw)
    interp = check_device(_patchify_kernel, x, "x")
    b, c, f, h, w = x.shape
    n = (f_compute // pf) * (h // ph) * (w // pw)
    out = new_output((b, n, pf * ph * pw * c), x.dtype, x.device)
    if out.numel() == 0:
        return out
    if x.stride(4) != 1 or x.stride(3) != w:
        x = x.contiguous()  # each (b, c, f) plane must be contiguous
    sxb, sxc, sxf = x.stride()[:3]
    if f == 1:
        sxf = 0  # every computed frame reads the image
    c_pad, block_hw, num_warps = _tile(c, h * w, interp)
    grid = (b * f_compute, triton.cdiv(h * w, block_hw))
    span = sum((s_ - 1) * st for s_, st in zip(x.shape, x.stride()))
    _patchify_kernel[grid](
        x, out, c, f_compute, h * w, n, h // ph, w // pw, sxb, sxc, sxf,
        W=w, PF=pf, PH=ph, PW=pw, C_PAD=c_pad, BLOCK_HW=block_hw,
        I64=max(out.numel(), span) + c_pad * h * w > INT32_LIMIT, num_warps=num_warps,
    )  # fmt: skip
    return out


def unpatchify(tokens: torch.Tensor, frames: int, height: int, width: int, pf: int, ph: int, pw: int) -> torch.Tensor:
    """Tokens to latent (inverse of `patchify`).

    tokens: [B, N, pf*ph*pw*C] float32 / float16 / bfloat16 (batch / token strides free), N = (F'/pf)(H/ph)(W/pw)
    with F' = frames, or pf when frames = 1 (an image: only frame 0 of the pf computed frames is kept).
    Returns a new contiguous [B, C, frames, height, width] tensor of tokens' dtype.
    """
    c, _ = check_unpatchify(tokens, frames, height, width, pf, ph, pw)
    interp = check_device(_unpatchify_kernel, tokens, "tokens")
    b, n, _ = tokens.shape
    out = new_output((b, c, frames, height, width), tokens.dtype, tokens.device)
    if out.numel() == 0:
        return out
    if tokens.stride(-1) != 1:
        tokens = tokens.contiguous()
    c_pad, block_hw, num_warps = _tile(c, height * width, interp)
    grid = (b * frames, triton.cdiv(height * width, block_hw))
    span = (b - 1) * tokens.stride(0) + n * tokens.stride(1)
    _unpatchify_kernel[grid](
        tokens, out, c, frames, height * width, height // ph, width // pw, tokens.stride(0), tokens.stride(1),
        W=width, PF=pf, PH=ph, PW=pw, C_PAD=c_pad, BLOCK_HW=block_hw,
        I64=max(out.numel(), span) + c_pad * height * width > INT32_LIMIT, num_warps=num_warps,
    )  # fmt: skip
    return out
