"""Fused rotary embedding of q and k in one launch (interleaved pairs, real arithmetic), optionally behind QK-LayerNorm.

For each pair i of a head: out[2i] = x[2i] c_i - x[2i+1] s_i, out[2i+1] = x[2i] s_i + x[2i+1] c_i, in float32, rounded
once to x's dtype. `rope_qk` walks q and k as flat arrays of pairs (no padding for head_dim 144): the first programs
of the grid rotate q, the rest k. `rope_qk_layernorm` first applies the QK LayerNorm (affine, over the Hq*Dh or
Hk*Dh row of each token, rounded to x's dtype as nn.LayerNorm does), then rotates; one program per block of tokens.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_rope_qk, check_rope_qk_layernorm, new_output
from ._triton_common import INT32_LIMIT, cast_to, check_device, pow2, round_to

# ----------------------------------------------------------------------------------------------
# Reference math (pure PyTorch; float64 inputs are computed in float64)
# ----------------------------------------------------------------------------------------------


def _rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    c, s = cos.to(acc)[:, :, None, :], sin.to(acc)[:, :, None, :]  # [B|1, N, 1, Dh/2]
    xf = x.to(acc)
    x0, x1 = xf[..., 0::2], xf[..., 1::2]
    out = torch.empty_like(xf)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out.to(x.dtype)


def rope_qk_ref(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, N, Hq, Dh], k [B, N, Hk, Dh], cos/sin [N, Dh/2] or [B, N, Dh/2] -> rotated (q, k) in their dtypes."""
    return _rotate_ref(q, cos, sin), _rotate_ref(k, cos, sin)


def _layernorm_rows_ref(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc).flatten(2)
    mean = xf.mean(-1, keepdim=True)
    var = (xf - mean).pow(2).mean(-1, keepdim=True)
    out = (xf - mean) * torch.rsqrt(var + eps) * w.to(acc) + b.to(acc)
    return out.to(x.dtype).view(x.shape)


def rope_qk_layernorm_ref(
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
    """LayerNorm over each token's Hq*Dh (Hk*Dh) row with weight/bias [Hq*Dh] ([Hk*Dh]), then `rope_qk_ref`."""
    return rope_qk_ref(_layernorm_rows_ref(q, q_w, q_b, eps), _layernorm_rows_ref(k, k_w, k_b, eps), cos, sin)


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _rope_pairs(x_ptr, o_ptr, cos_ptr, sin_ptr, blk, n_pairs, N, cos_bstride,
                H: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr, I64: tl.constexpr):  # fmt: skip
    """Rotate pairs [blk*BLOCK, (blk+1)*BLOCK) of a contiguous [B, N, H, 2*HALF] tensor."""
    if I64:
        blk = blk.to(tl.int64)
    e = blk * (2 * BLOCK) + tl.arange(0, 2 * BLOCK)  # element index: contiguous, so loads / stores vectorise
    emask = e < 2 * n_pairs
    x = tl.load(x_ptr + e, mask=emask, other=0.0).to(tl.float32)
    x0, x1 = tl.split(tl.reshape(x, (BLOCK, 2)))
    p = blk * BLOCK + tl.arange(0, BLOCK)  # pair index
    pmask = p < n_pairs
    i = p % HALF  # frequency index
    tok = p // (H * HALF)  # b * N + n
    bi = tok // N
    cidx = (bi * cos_bstride + (tok - bi * N)) * HALF + i
    c = tl.load(cos_ptr + cidx, mask=pmask, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + cidx, mask=pmask, other=0.0).to(tl.float32)
    out = tl.reshape(tl.join(x0 * c - x1 * s, x0 * s + x1 * c), (2 * BLOCK,))
    tl.store(o_ptr + e, cast_to(out, o_ptr.dtype.element_ty), mask=emask)


@triton.jit
def _rope_qk_kernel(
    q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr,
    nq_pairs, nk_pairs, nq_blocks, N, cos_bstride,
    HQ: tl.constexpr, HK: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    if pid < nq_blocks:
        _rope_pairs(q_ptr, qo_ptr, cos_ptr, sin_ptr, pid, nq_pairs, N, cos_bstride, HQ, HALF, BLOCK, I64)
    else:
        _rope_pairs(k_ptr, ko_ptr, cos_ptr, sin_ptr, pid - nq_blocks, nk_pairs, N, cos_bstride, HK, HALF, BLOCK, I64)


@triton.jit
def _ln_rope_tokens(x_ptr, o_ptr, w_ptr, b_ptr, cos_ptr, sin_ptr, blk, n_tok, N, cos_bstride, eps,
                    H: tl.constexpr, HALF: tl.constexpr, ROWS: tl.constexpr, BLOCK_P: tl.constexpr,
                    I64: tl.constexpr):  # fmt: skip
    """LayerNorm + rotate tokens [blk*ROWS, (blk+1)*ROWS) of a contiguous [B*N, H*2*HALF] tensor."""
    if I64:
        blk = blk.to(tl.int64)
    tok = blk * ROWS + tl.arange(0, ROWS)
    tmask = tok < n_tok
    pr = tl.arange(0, BLOCK_P)  # pair index within the token row
    prmask = pr < H * HALF
    i = pr % HALF
    two = tl.arange(0, 2)
    width = H * HALF * 2
    col = pr[:, None] * 2 + two[None, :]  # [BLOCK_P, 2]
    cmask = prmask[:, None]
    w = tl.load(w_ptr + col, mask=cmask, other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + col, mask=cmask, other=0.0).to(tl.float32)
    mask = tmask[:, None, None] & cmask[None, :, :]
    x = tl.load(x_ptr + tok[:, None, None] * width + col[None, :, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(tl.sum(x, axis=2), axis=1) / width
    xc = tl.where(mask, x - mean[:, None, None], 0.0)
    rstd = tl.rsqrt(tl.sum(tl.sum(xc * xc, axis=2), axis=1) / width + eps)
    xn = round_to(xc * rstd[:, None, None] * w[None, :, :] + bias[None, :, :], x_ptr.dtype.element_ty)
    bi = tok // N
    cidx = (bi * cos_bstride + (tok - bi * N))[:, None] * HALF + i[None, :]  # [ROWS, BLOCK_P]
    cs_mask = tmask[:, None] & prmask[None, :]
    c = tl.load(cos_ptr + cidx, mask=cs_mask, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + cidx, mask=cs_mask, other=0.0).to(tl.float32)
    x0, x1 = tl.split(xn)
    out = tl.join(x0 * c - x1 * s, x0 * s + x1 * c)
    tl.store(o_ptr + tok[:, None, None] * width + col[None, :, :], cast_to(out, o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_qk_layernorm_kernel(
    q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr, qw_ptr, qb_ptr, kw_ptr, kb_ptr,
    n_tok, nq_blocks, N, cos_bstride, eps,
    HQ: tl.constexpr, HK: tl.constexpr, HALF: tl.constexpr, ROWS: tl.constexpr,
    BLOCK_PQ: tl.constexpr, BLOCK_PK: tl.constexpr, I64: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    if pid < nq_blocks:
        _ln_rope_tokens(q_ptr, qo_ptr, qw_ptr, qb_ptr, cos_ptr, sin_ptr, pid, n_tok, N, cos_bstride, eps,
                        HQ, HALF, ROWS, BLOCK_PQ, I64)  # fmt: skip
    else:
        _ln_rope_tokens(k_ptr, ko_ptr, kw_ptr, kb_ptr, cos_ptr, sin_ptr, pid - nq_blocks, n_tok, N, cos_bstride, eps,
                        HK, HALF, ROWS, BLOCK_PK, I64)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def rope_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k by the RoPE angles of each token, in one kernel launch.

    q: [B, N, Hq, Dh], k: [B, N, Hk, Dh], float32 / float16 / bfloat16, Dh even, Hq a multiple of Hk.
    cos, sin: float32 [N, Dh/2] or [B, N, Dh/2] ([1, N, Dh/2] broadcasts over the batch).
    Returns new contiguous (q_out [B, N, Hq, Dh], k_out [B, N, Hk, Dh]) in the dtypes of q and k.
    """
    cos_bstride = check_rope_qk(q, k, cos, sin)
    interp = check_device(_rope_qk_kernel, q, "q")
    q, k, cos, sin = q.contiguous(), k.contiguous(), cos.contiguous(), sin.contiguous()
    qo, ko = new_output(q.shape, q.dtype, q.device), new_output(k.shape, k.dtype, k.device)
    b, n, hq, dh = q.shape
    hk = k.shape[2]
    nq_pairs, nk_pairs = q.numel() // 2, k.numel() // 2
    if nq_pairs == 0:
        return qo, ko
    block = min(1 << 16, pow2(nq_pairs)) if interp else 1024
    nq_blocks = triton.cdiv(nq_pairs, block)
    grid = (nq_blocks + triton.cdiv(nk_pairs, block),)
    _rope_qk_kernel[grid](
        q, k, qo, ko, cos, sin, nq_pairs, nk_pairs, nq_blocks, n, cos_bstride,
        HQ=hq, HK=hk, HALF=dh // 2, BLOCK=block, I64=q.numel() + block > INT32_LIMIT, num_warps=4,
    )  # fmt: skip
    return qo, ko


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
    """QK-LayerNorm (affine, over each token's full row) followed by RoPE, q and k in one launch.

    q: [B, N, Hq, Dh], k: [B, N, Hk, Dh], float32 / float16 / bfloat16; cos, sin: float32 [N, Dh/2] or
    [B, N, Dh/2]; q_w, q_b: [Hq*Dh]; k_w, k_b: [Hk*Dh] (any float dtype).
    Returns new contiguous (q_out, k_out) in the dtypes of q and k.
    """
    cos_bstride, eps = check_rope_qk_layernorm(q, k, cos, sin, q_w, q_b, k_w, k_b, eps)
    interp = check_device(_rope_qk_layernorm_kernel, q, "q")
    q, k, cos, sin = q.contiguous(), k.contiguous(), cos.contiguous(), sin.contiguous()
    q_w, q_b, k_w, k_b = q_w.contiguous(), q_b.contiguous(), k_w.contiguous(), k_b.contiguous()
    qo, ko = new_output(q.shape, q.dtype, q.device), new_output(k.shape, k.dtype, k.device)
    b, n, hq, dh = q.shape
    hk = k.shape[2]
    n_tok = b * n
    if n_tok == 0:
        return qo, ko
    half = dh // 2
    block_pq, block_pk = pow2(hq * half), pow2(hk * half)
    rows = max(1, min(pow2(n_tok), (1 << 17) // (2 * block_pq))) if interp else 1
    nq_blocks = triton.cdiv(n_tok, rows)
    grid = (2 * nq_blocks,)
    _rope_qk_layernorm_kernel[grid](
        q, k, qo, ko, cos, sin, q_w, q_b, k_w, k_b, n_tok, nq_blocks, n, cos_bstride, eps,
        HQ=hq, HK=hk, HALF=half, ROWS=rows, BLOCK_PQ=block_pq, BLOCK_PK=block_pk,
        I64=q.numel() + rows * 2 * block_pq > INT32_LIMIT, num_warps=8 if block_pq >= 1024 else 4,
    )  # fmt: skip
    return qo, ko
