"""FLOPs and bytes of one velocity evaluation, computed from the config (for achieved-rate reports), and the FLOPs a
sampling run spends (`FlopCount`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lumina_rt.config import ModelConfig, token_grid


def token_count(config: ModelConfig, combo: str, frames: int, height: int, width: int) -> int:
    """Tokens of a latent [C, frames, height, width] at a patch combo (images are repeated to the frame patch)."""
    f_tokens, h_tokens, w_tokens = token_grid(frames, height, width, *config.check_combo(combo))
    return f_tokens * h_tokens * w_tokens


def forward_flops(config: ModelConfig, combo: str, tokens: int, cap_len: int, batch: int = 1) -> int:
    """Matmul FLOPs (2·m·n·k) of one forward over `batch` samples of `tokens` tokens and `cap_len` caption tokens."""
    pf, p = config.check_combo(combo)
    d, dkv, hff, ydim = config.dim, config.kv_heads * config.head_dim, config.ffn_hidden, config.cap_feat_dim
    patch_feat = pf * p * p * config.in_channels
    n, length = tokens, cap_len
    per_layer = (
        2 * n * d * d * 2  # wq, wo
        + 2 * n * d * dkv * 2  # wk, wv
        + 2 * length * ydim * dkv * 2  # wk_y, wv_y
        + 4 * n * n * d  # self-attention: QK^T and AV
        + 4 * n * length * d  # cross-attention
        + 2 * n * d * hff * 3  # SwiGLU FFN
        + 2 * config.adaln_dim * 4 * d  # modulation
    )
    total = config.n_layers * per_layer + 2 * n * patch_feat * d * 2  # + embedder and final layer
    return batch * total


def weight_bytes(config: ModelConfig, bytes_per_param: int = 4) -> int:
    """Bytes of the parameters that one forward reads (shared backbone + one scale's embedder and final layer)."""
    from lumina_rt.describe import describe

    info = describe(config)
    pf, p = config.all_f_patch_size[0], config.all_patch_size[0]
    skip = [f"{kind}.{config.module_key(pf2, p2)}." for kind in ("all_x_embedder", "all_final_layer")
            for p2, pf2 in zip(config.all_patch_size, config.all_f_patch_size) if (p2, pf2) != (p, pf)]  # fmt: skip
    n = 0
    for key, shape in info["state_dict"].items():
        if any(key.startswith(s) for s in skip):
            continue
        size = 1
        for s in shape:
            size *= s
        n += size
    return n * bytes_per_param


def ulysses_bytes(config: ModelConfig, combo: str, tokens: int, sp: int, bytes_per_elem: int = 2) -> int:
    """Bytes one process sends in one forward of one sample under Ulysses sequence parallel over `sp` processes.

    Per layer: q, k, v (key / value heads expanded to the query heads) out and the attention output back, each
    process keeping 1/sp of its ceil(tokens / sp) tokens; then the final all-gather of the fp32 outputs.
    """
    if sp == 1:
        return 0
    pf, p = config.check_combo(combo)
    local = -(-tokens // sp)
    per_layer = 4 * local * config.dim * bytes_per_elem * (sp - 1) // sp
    gather = local * pf * p * p * config.in_channels * 4 * (sp - 1)
    return config.n_layers * per_layer + gather


def predict_step_seconds(
    config: ModelConfig,
    combo: str,
    tokens: int,
    cap_len: int,
    sp: int,
    cfg: int,
    matmul_flops_per_s: float,
    link_bytes_per_s: float,
) -> float:
    """Predicted seconds of one guided step (two branches) on cfg x sp devices: each device's share of the matmul
    FLOPs at `matmul_flops_per_s` plus its all-to-all bytes at `link_bytes_per_s`, not overlapped (a bound; the
    caption cross-attention projections, replicated on every device, are counted once per device)."""
    branches_per_group = 2 // cfg
    flops = forward_flops(config, combo, tokens, cap_len, batch=branches_per_group) / sp
    comm = branches_per_group * ulysses_bytes(config, combo, tokens, sp)
    return flops / matmul_flops_per_s + comm / link_bytes_per_s


class FlopCount:
    """The model FLOPs a sampling run actually spends, per scale and per guidance branch.

    `wrap(velocity_fn)` gives a velocity function that counts every call it forwards: `forward_flops` of the call's
    rows, token count (from the latent grid) and caption length. A call of 2 x `batch` rows is a guided step (the
    positive half, then the negative half); a call of `batch` rows is the positive branch alone (an unguided step, or a
    guided step whose guidance difference was reused).
    """

    def __init__(self, config: ModelConfig, batch: int):
        self.config = config
        self.batch = int(batch)
        self.per_scale: dict[str, dict[str, int]] = {}  # combo -> {"positive": flops, "negative": flops}

    def add(self, combo: str, rows: int, grid: tuple[int, int, int], cap_len: int) -> None:
        """Count one call of `rows` rows on a latent grid (frames, height, width) with `cap_len` caption tokens."""
        n = token_count(self.config, combo, *grid)
        one = forward_flops(self.config, combo, n, cap_len, batch=1)
        entry = self.per_scale.setdefault(combo, {"positive": 0, "negative": 0})
        positive = min(rows, self.batch)
        entry["positive"] += positive * one
        entry["negative"] += (rows - positive) * one

    def wrap(self, velocity_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def counted(x, t, cap_feats, cap_mask, motion, combo):  # noqa: ANN001, ANN202
            out = velocity_fn(x, t, cap_feats, cap_mask, motion, combo)
            grid = (int(x.shape[2]), int(x.shape[3]), int(x.shape[4]))
            self.add(combo, int(x.shape[0]), grid, int(cap_feats.shape[1]))
            return out

        return counted

    @property
    def total(self) -> int:
        return sum(e["positive"] + e["negative"] for e in self.per_scale.values())

    def summary(self) -> dict[str, Any]:
        """{"total": FLOPs, "per_scale": {combo: {"positive": FLOPs, "negative": FLOPs}}}."""
        return {"total": self.total, "per_scale": {c: dict(e) for c, e in self.per_scale.items()}}
