"""Gated attention of a Next-DiT block: the math (`gated_attention_ref`) and its PyTorch SDPA form
(`gated_attention_sdpa`, the torch backend's and the CPU kernel's fallback); the CPU kernel is csrc/attention.cpp.

out[b, n, h] = softmax(q k^T / sqrt(Dh) + mask) v + tanh(gate[h]) * softmax(q yk^T / sqrt(Dh) + y_mask) yv, with
query head h reading key / value head h // (Hq / Hk) (GQA). There is no Triton kernel: on GPUs the op runs PyTorch's
fused SDPA kernels (flash / memory-efficient / cuDNN), which already run at the matmul rate there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def repeat_kv(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, L, Hk, Dh] -> [B, Hq, L, Dh], key / value heads repeated for GQA (query head h reads head h // rep)."""
    t = t.transpose(1, 2)
    return t if t.shape[1] == n_heads else t.repeat_interleave(n_heads // t.shape[1], dim=1)


def gated_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    x_mask: torch.Tensor | None,
    yk: torch.Tensor,
    yv: torch.Tensor,
    y_mask: torch.Tensor,
    gate: torch.Tensor,
    sdpa: Callable[..., torch.Tensor] = F.scaled_dot_product_attention,
) -> torch.Tensor:
    """The op through scaled dot-product attention (`sdpa(q, k, v, mask)` on [B, H, N, Dh]) -> [B, N, Hq*Dh]."""
    b, n, hq, dh = q.shape
    qh = q.transpose(1, 2)
    out = sdpa(qh, repeat_kv(k, hq), repeat_kv(v, hq), None if x_mask is None else x_mask[:, None, None, :])
    out_y = sdpa(qh, repeat_kv(yk, hq), repeat_kv(yv, hq), y_mask[:, None, None, :])
    out = out + out_y * gate.tanh().to(out_y.dtype).view(1, -1, 1, 1)
    return out.transpose(1, 2).reshape(b, n, hq * dh)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q [B, N, Hq, Dh], k / v [B, L, Hk, Dh], mask [B, L] bool -> [B, N, Hq, Dh], written out (no SDPA)."""
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("bnhd,blhd->bhnl", q, k) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return torch.einsum("bhnl,blhd->bnhd", scores.softmax(-1), v)


def gated_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    x_mask: torch.Tensor | None,
    yk: torch.Tensor,
    yv: torch.Tensor,
    y_mask: torch.Tensor,
    gate: torch.Tensor,
) -> torch.Tensor:
    """The op's math at the inputs' precision (use float64 inputs for a reference); shapes as `ops.gated_attention`."""
    out = _attend(q, k, v, x_mask) + _attend(q, yk, yv, y_mask) * gate.tanh().to(q.dtype)[:, None]
    return out.flatten(2)
