"""Reference Multi-scale Next-DiT, in numerical parity with the released Lumina-Video model.

State-dict key names follow the released checkpoints exactly (`all_x_embedder.{p}-{pf}`,
`layers.N.attention.wk_y`, `...adaLN_modulation.1`, `pad_token`, ...).

Two input paths:
- the batch path `forward(x [B, C, F, H, W], ...)`: fixed shapes, padded caption masks, no per-sample
  Python loops or host syncs, so it trains, exports to ONNX and captures into CUDA graphs;
- the list path `forward_list([x_i [C, F_i, H_i, W_i]], ...)`: items of different sizes in one batch,
  padded to the longest; every item attends only to its own tokens and its own caption.

The token-level core `forward_tokens` is what engines export: patchify and RoPE tables live outside it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from lumina_rt import ops
from lumina_rt.config import ModelConfig, token_grid
from lumina_rt.errors import ConfigError, InputError

# ------------------------------------------------------------------------------------------------
# Embedders
# ------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of a scalar per sample (timestep or motion score), then an MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size
        nn.init.normal_(self.mlp[0].weight, std=0.02)
        nn.init.zeros_(self.mlp[0].bias)
        nn.init.normal_(self.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.mlp[2].bias)

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype))


# ------------------------------------------------------------------------------------------------
# 3D RoPE tables (real-valued; float64 angles rounded to float32, as the released complex64 table)
# ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _rope_tables_cpu(
    f_tokens: int, h_tokens: int, w_tokens: int, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    eighth = head_dim // 8
    axes = []
    for n, d in ((f_tokens, eighth * 2), (h_tokens, eighth * 3), (w_tokens, eighth * 3)):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        axes.append(torch.outer(torch.arange(n, dtype=torch.float64), freqs))  # [n, d/2]
    af, ah, aw = axes
    angles = torch.cat(
        [
            af[:, None, None, :].expand(f_tokens, h_tokens, w_tokens, -1),
            ah[None, :, None, :].expand(f_tokens, h_tokens, w_tokens, -1),
            aw[None, None, :, :].expand(f_tokens, h_tokens, w_tokens, -1),
        ],
        dim=-1,
    ).reshape(f_tokens * h_tokens * w_tokens, head_dim // 2)
    return torch.cos(angles).float(), torch.sin(angles).float()


def rope_tables(
    f_tokens: int, h_tokens: int, w_tokens: int, head_dim: int, theta: float, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 [f*h*w, head_dim/2] for a token grid in (f h w) order; dims split f:h:w = 2:3:3 eighths."""
    cos, sin = _rope_tables_cpu(int(f_tokens), int(h_tokens), int(w_tokens), int(head_dim), float(theta))
    return cos.to(device), sin.to(device)


def latent_rope_tables(
    config: ModelConfig, frames: int, height: int, width: int, pf: int, p: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rope_tables` of a latent grid [F, H, W] patched (pf, p, p) (`config.token_grid`: an image counts as pf
    frames)."""
    return rope_tables(*token_grid(frames, height, width, pf, p), config.head_dim, config.rope_theta, device)


# ------------------------------------------------------------------------------------------------
# Transformer
# ------------------------------------------------------------------------------------------------


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The single-device attention [B, H, N, Dh] (what a sequence-parallel `attention_fn` runs on its head shard)."""
    return ops.sdpa(q, k, v, mask)


class Attention(nn.Module):
    """Self-attention over the video tokens plus a tanh-gated cross-attention to the caption, GQA, QK-norm."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, qk_norm: bool, y_dim: int):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.n_rep = n_heads // n_kv_heads
        self.head_dim = dim // n_heads

        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wk_y = nn.Linear(y_dim, n_kv_heads * self.head_dim, bias=False)
        self.wv_y = nn.Linear(y_dim, n_kv_heads * self.head_dim, bias=False)
        self.gate = nn.Parameter(torch.zeros(n_heads))
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        for lin in (self.wq, self.wk, self.wv, self.wk_y, self.wv_y, self.wo):
            nn.init.xavier_uniform_(lin.weight)

        if qk_norm:
            self.q_norm = nn.LayerNorm(n_heads * self.head_dim)
            self.k_norm = nn.LayerNorm(n_kv_heads * self.head_dim)
            self.ky_norm = nn.LayerNorm(n_kv_heads * self.head_dim)
        else:
            self.q_norm = self.k_norm = self.ky_norm = nn.Identity()
        # Self-attention over the video tokens: None is the local SDPA. A sequence-parallel runner sets a callable
        # `attention_fn(q, k, v, x_mask) -> out` (q, k, v [B, Hq, N_local, Dh]; lumina_rt.engines.parallel).
        self.attention_fn = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        y: torch.Tensor,
        y_mask: torch.Tensor,
        x_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        dtype = x.dtype
        xq = self.wq(x).view(b, n, self.n_heads, self.head_dim)
        xk = self.wk(x).view(b, n, self.n_kv_heads, self.head_dim)
        xv = self.wv(x)
        if isinstance(self.q_norm, nn.LayerNorm):  # QK-norm and RoPE in one fused op
            qn, kn = self.q_norm, self.k_norm
            xq, xk = ops.rope_qk_layernorm(xq, xk, cos, sin, qn.weight, qn.bias, kn.weight, kn.bias, qn.eps)
        else:
            xq, xk = ops.rope_qk(xq, xk, cos, sin)
        xk, xq = xk.to(dtype), xq.to(dtype)
        yk = self.ky_norm(self.wk_y(y)).to(dtype).view(b, -1, self.n_kv_heads, self.head_dim)
        yv = self.wv_y(y).view(b, -1, self.n_kv_heads, self.head_dim)
        xv = xv.view(b, n, self.n_kv_heads, self.head_dim)
        if self.attention_fn is None:  # self- and gated cross-attention in one fused op
            return self.wo(ops.gated_attention(xq, xk, xv, x_mask, yk, yv, y_mask, self.gate))
        hq = self.n_heads
        out = self.attention_fn(xq.transpose(1, 2), ops.repeat_kv(xk, hq), ops.repeat_kv(xv, hq), x_mask)
        out_y = ops.sdpa(xq.transpose(1, 2), ops.repeat_kv(yk, hq), ops.repeat_kv(yv, hq), y_mask[:, None, None, :])
        out = out + out_y * self.gate.tanh().view(1, -1, 1, 1)
        return self.wo(out.transpose(1, 2).reshape(b, n, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        for lin in (self.w1, self.w2, self.w3):
            nn.init.xavier_uniform_(lin.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Sandwich-normed block: x + tanh(g) * Norm2(Attn(Norm1(x) * (1 + s))), same for the FFN."""

    def __init__(self, layer_id: int, cfg: ModelConfig):
        super().__init__()
        dim = cfg.dim
        self.layer_id = layer_id
        self.eps = cfg.norm_eps
        self.attention = Attention(dim, cfg.n_heads, cfg.kv_heads, cfg.qk_norm, cfg.cap_feat_dim)
        self.feed_forward = FeedForward(dim, cfg.ffn_hidden)
        self.attention_norm1 = RMSNorm(dim, eps=cfg.norm_eps)
        self.ffn_norm1 = RMSNorm(dim, eps=cfg.norm_eps)
        self.attention_norm2 = RMSNorm(dim, eps=cfg.norm_eps)
        self.ffn_norm2 = RMSNorm(dim, eps=cfg.norm_eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.adaln_dim, 4 * dim, bias=True))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)
        self.attention_y_norm = RMSNorm(cfg.cap_feat_dim, eps=cfg.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        adaln_input: torch.Tensor,
        x_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(adaln_input).chunk(4, dim=1)
        h = ops.rmsnorm_modulate(x, self.attention_norm1.weight, scale_msa, self.eps)
        h = self.attention(h, cos, sin, self.attention_y_norm(cap_feats), cap_mask, x_mask)
        x = ops.gated_residual(x, h, self.attention_norm2.weight, gate_msa, self.eps)
        h = self.feed_forward(ops.rmsnorm_modulate(x, self.ffn_norm1.weight, scale_mlp, self.eps))
        return ops.gated_residual(x, h, self.ffn_norm2.weight, gate_mlp, self.eps)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, f_patch_size: int, out_channels: int, adaln_dim: int):
        super().__init__()
        self.eps = 1e-6
        self.linear = nn.Linear(hidden_size, f_patch_size * patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(adaln_dim, hidden_size, bias=True))
        for lin in (self.linear, self.adaLN_modulation[1]):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.linear(ops.layernorm_modulate(x, self.adaLN_modulation(c), self.eps))


class MultiScaleNextDiT(nn.Module):
    """Multi-scale Next-DiT: one backbone, one patch embedder and final layer per patch size."""

    def __init__(self, config: ModelConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = ModelConfig.from_kwargs(kwargs)
        elif kwargs:
            raise ConfigError(f"pass either a ModelConfig or keyword arguments, not both (got {sorted(kwargs)})")
        self.config = cfg = config
        self.in_channels = self.out_channels = cfg.in_channels

        self.all_x_embedder = nn.ModuleDict()
        self.all_final_layer = nn.ModuleDict()
        for p, pf in zip(cfg.all_patch_size, cfg.all_f_patch_size):
            key = cfg.module_key(pf, p)
            emb = nn.Linear(pf * p * p * cfg.in_channels, cfg.dim, bias=True)
            nn.init.xavier_uniform_(emb.weight)
            nn.init.zeros_(emb.bias)
            self.all_x_embedder[key] = emb
            self.all_final_layer[key] = FinalLayer(cfg.dim, p, pf, self.out_channels, cfg.adaln_dim)

        self.t_embedder = TimestepEmbedder(cfg.adaln_dim)
        self.motion_embedder = TimestepEmbedder(cfg.adaln_dim)
        nn.init.zeros_(self.motion_embedder.mlp[2].weight)
        self.cap_embedder = nn.Sequential(nn.LayerNorm(cfg.cap_feat_dim), nn.Linear(cfg.cap_feat_dim, cfg.adaln_dim))
        nn.init.zeros_(self.cap_embedder[1].weight)
        nn.init.zeros_(self.cap_embedder[1].bias)

        self.layers = nn.ModuleList([TransformerBlock(i, cfg) for i in range(cfg.n_layers)])
        self.pad_token = nn.Parameter(torch.empty(cfg.dim))
        nn.init.normal_(self.pad_token, std=0.02)
        self.check_inputs = True  # NaN / shape checks in forward (skipped automatically while tracing)

    # ------------------------------------------------------------------ conditioning
    def adaln_input(
        self, t: torch.Tensor, cap_feats: torch.Tensor, cap_mask: torch.Tensor, motion_score: torch.Tensor
    ) -> torch.Tensor:
        """Modulation input [B, min(dim, 1024)]: t embedding + pooled caption + motion (negative score: none)."""
        t_emb = self.t_embedder(t * self.config.t_scale)
        motion = motion_score.to(t_emb.dtype) * self.config.motion_scale
        no_motion = motion < 0
        motion = torch.where(no_motion, torch.zeros_like(motion), motion)
        m_emb = self.motion_embedder(motion)
        m_emb = torch.where(no_motion[:, None], torch.zeros_like(m_emb), m_emb)
        mask = cap_mask.to(cap_feats.dtype).unsqueeze(-1)
        pooled = (cap_feats * mask).sum(dim=1) / mask.sum(dim=1)
        return t_emb + self.cap_embedder(pooled) + m_emb

    # ------------------------------------------------------------------ token-level core
    def forward_tokens(
        self,
        tokens: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion_score: torch.Tensor,
        combo: str,
        x_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity on patchified tokens [B, N, pf*p*p*C] -> [B, N, pf*p*p*C].

        cos, sin: float32 RoPE tables [N, Dh/2] (or [B, N, Dh/2]); cap_feats [B, L, cap_feat_dim];
        cap_mask [B, L] (nonzero = real token); t, motion_score [B]; x_mask [B, N] bool or None.
        """
        pf, p = self.config.check_combo(combo)
        key = self.config.module_key(pf, p)
        x = self.all_x_embedder[key](tokens)
        adaln = self.adaln_input(t, cap_feats, cap_mask, motion_score)
        y_mask = cap_mask.bool()
        for layer in self.layers:
            x = layer(x, cos, sin, cap_feats, y_mask, adaln, x_mask)
        return self.all_final_layer[key](x, adaln)

    # ------------------------------------------------------------------ batch (tensor) path
    def forward(
        self,
        x: torch.Tensor | list[torch.Tensor],
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion_score: torch.Tensor,
        patch_size: int,
        f_patch_size: int,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Velocity for x [B, C, F, H, W] (F = 1: an image). A list input goes to `forward_list`."""
        if isinstance(x, (list, tuple)):
            return self.forward_list(x, t, cap_feats, cap_mask, motion_score, patch_size, f_patch_size)
        combo = f"{f_patch_size}x{patch_size}"
        self.config.check_combo(combo)
        if self.check_inputs and not ops.tracing():
            _check_batch_inputs(self.config, x, t, cap_feats, cap_mask, motion_score, f_patch_size, patch_size)
        _, _, frames, height, width = x.shape
        cos, sin = latent_rope_tables(self.config, frames, height, width, f_patch_size, patch_size, x.device)
        tokens = ops.patchify(x, f_patch_size, patch_size, patch_size)
        out = self.forward_tokens(tokens, cos, sin, t, cap_feats, cap_mask, motion_score, combo)
        return ops.unpatchify(out, frames, height, width, f_patch_size, patch_size, patch_size)

    # ------------------------------------------------------------------ variable-length (list) path
    def forward_list(
        self,
        x: list[torch.Tensor],
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion_score: torch.Tensor,
        patch_size: int,
        f_patch_size: int,
    ) -> list[torch.Tensor]:
        """Velocity for a list of items [C, F_i, H_i, W_i] of different sizes; returns a list of the same shapes."""
        combo = f"{f_patch_size}x{patch_size}"
        self.config.check_combo(combo)
        if len(x) == 0:
            raise InputError("forward_list got an empty list of items")
        if self.check_inputs:
            for i, item in enumerate(x):
                if item.dim() != 4:
                    raise InputError(f"list item {i} must be [C, F, H, W], got shape {tuple(item.shape)}")
                _check_batch_inputs(
                    self.config, item[None], t[i : i + 1], cap_feats[i : i + 1], cap_mask[i : i + 1],
                    motion_score[i : i + 1], f_patch_size, patch_size, batch=len(x), where=f"list item {i}: ",
                )  # fmt: skip
        all_tokens, all_cos, all_sin, sizes = [], [], [], []
        for item in x:
            _, frames, height, width = item.shape
            cos, sin = latent_rope_tables(self.config, frames, height, width, f_patch_size, patch_size, item.device)
            all_tokens.append(ops.patchify(item[None], f_patch_size, patch_size, patch_size)[0])
            all_cos.append(cos)
            all_sin.append(sin)
            sizes.append((frames, height, width))
        lengths = [len(tk) for tk in all_tokens]
        n_max = max(lengths)
        tokens = torch.nn.utils.rnn.pad_sequence(all_tokens, batch_first=True)
        cos = torch.nn.utils.rnn.pad_sequence(all_cos, batch_first=True)
        sin = torch.nn.utils.rnn.pad_sequence(all_sin, batch_first=True)
        x_mask = torch.arange(n_max, device=tokens.device)[None] < torch.tensor(lengths, device=tokens.device)[:, None]
        out = self.forward_tokens(tokens, cos, sin, t, cap_feats, cap_mask, motion_score, combo, x_mask)
        return [
            ops.unpatchify(out[i : i + 1, : lengths[i]], f, h, w, f_patch_size, patch_size, patch_size)[0]
            for i, (f, h, w) in enumerate(sizes)
        ]

    def velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion_score: torch.Tensor,
        combo: str,
    ) -> torch.Tensor:
        """The velocity function the sampler calls (patch size as a released combo string)."""
        pf, p = self.config.check_combo(combo)
        return self.forward(x, t, cap_feats, cap_mask, motion_score, p, pf)

    def check_batch(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion_score: torch.Tensor,
        combo: str,
    ) -> None:
        """InputError naming the bad value when `forward` could not take these inputs (what `forward` checks)."""
        pf, p = self.config.check_combo(combo)
        _check_batch_inputs(self.config, x, t, cap_feats, cap_mask, motion_score, pf, p)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ------------------------------------------------------------------------------------------------
# Input checks (outside the traced math; they may sync with the device)
# ------------------------------------------------------------------------------------------------


def check_batch_shapes(
    cfg: ModelConfig,
    x: torch.Tensor,
    t: torch.Tensor,
    cap_feats: torch.Tensor,
    cap_mask: torch.Tensor,
    motion_score: torch.Tensor,
    batch: int | None = None,
    where: str = "",
) -> None:
    """InputError naming the bad value unless x [B, C, F, H, W] has the model's channels and t [B], motion_score
    [B], cap_feats [B, L, cap_feat_dim] and cap_mask [B, L] go with it (the model and the engines both check this).
    `where` prefixes the messages (a list item: its rows are then x's, not `batch`)."""
    if x.dim() != 5:
        raise InputError(f"{where}x must be [B, C, F, H, W], got shape {tuple(x.shape)}")
    b, c = x.shape[:2]
    if c != cfg.in_channels:
        raise InputError(f"{where}x has {c} channels, the model takes in_channels={cfg.in_channels}")
    batch = b if batch is None else batch
    rows = b if where else batch
    if t.shape != (rows,):
        raise InputError(f"{where}t must have shape ({rows},), got {tuple(t.shape)}")
    if motion_score.shape != (rows,):
        raise InputError(f"{where}motion_score must have shape ({rows},), got {tuple(motion_score.shape)}")
    if cap_feats.dim() != 3 or cap_feats.shape[0] != rows or cap_feats.shape[2] != cfg.cap_feat_dim:
        raise InputError(
            f"{where}cap_feats must be [{rows}, L, {cfg.cap_feat_dim}], got shape {tuple(cap_feats.shape)}"
        )
    if cap_mask.shape != cap_feats.shape[:2]:
        raise InputError(
            f"{where}cap_mask shape {tuple(cap_mask.shape)} does not match cap_feats [B, L] "
            f"= {tuple(cap_feats.shape[:2])}"
        )


def _check_batch_inputs(
    cfg: ModelConfig,
    x: torch.Tensor,
    t: torch.Tensor,
    cap_feats: torch.Tensor,
    cap_mask: torch.Tensor,
    motion_score: torch.Tensor,
    pf: int,
    p: int,
    batch: int | None = None,
    where: str = "",
) -> None:
    check_batch_shapes(cfg, x, t, cap_feats, cap_mask, motion_score, batch, where)
    frames, height, width = x.shape[2:]
    if frames != 1 and frames % pf:
        raise InputError(f"{where}frames={frames} is not divisible by the frame patch size {pf} (combo {pf}x{p})")
    for name, size in (("height", height), ("width", width)):
        if size % p:
            raise InputError(f"{where}{name}={size} is not divisible by the spatial patch size {p} (combo {pf}x{p})")
    empty = (cap_mask != 0).sum(dim=1) == 0
    if bool(empty.any()):
        raise InputError(f"{where}caption rows {empty.nonzero().flatten().tolist()} have no unmasked token")
    for name, tensor in (("x", x), ("t", t), ("cap_feats", cap_feats), ("motion_score", motion_score)):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{where}{name} contains NaN or infinite values")
