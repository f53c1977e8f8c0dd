"""Gated attention of a Next-DiT block: the math (`gated_attention_ref`); the CPU kernel is csrc/attention.cpp.

out[b, n, h] = softmax(q k^T / sqrt(Dh) + mask) v + tanh(gate[h]) * softmax(q yk^T / sqrt(Dh) + y_mask) yv, with
query head h reading key / value head h // (Hq / Hk) (GQA). There is no Triton kernel: on GPUs the op runs PyTorch's
fused SDPA kernels (flash / memory-efficient / cuDNN), which already run at the matmul rate there.
"""

from __future__ import annotations

import torch


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
