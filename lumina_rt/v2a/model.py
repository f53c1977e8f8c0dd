"""Lumina-V2A: sound for a video, a Next-DiT trained with rectified flow matching on audio latents.

What arXiv 2502.06782 (Appendix D) specifies, and where it is here:

- audio latents: waveform -> STFT -> mel -> latent (`lumina_rt.v2a.codec.AudioCodec`, PCA of log-mel blocks); generation
  decodes latent -> mel -> waveform with a vocoder (Griffin-Lim, `lumina_rt.v2a.codec.mel_to_waveform`);
- "video-text-audio" blocks with co-attention (`V2ABlock`): the visual tokens (one per video frame) and the caption
  tokens are concatenated into one context that the audio tokens attend to, through the Next-DiT attention's
  zero-initialised tanh-gated cross-attention (`lumina_rt.model.Attention`), next to self-attention over the audio
  tokens with 2D RoPE over (audio time, frequency band) token positions;
- conditioning: a vector from the time embedding plus pooled global visual and text features, plus high-frame-rate
  visual features (per video frame, interpolated to each audio token's time and projected), injected per token
  through adaLN scale and tanh gate (zero-initialised, as in Next-DiT).

Two additions to what the paper states (docs/audio.md, "What was tried"): the high-frame-rate features are also added
to the audio tokens' inputs (through a zero-initialised projection, so a fresh model still ignores the video; without
it a 500-step trial learned no timing), and the tokens get a learned absolute frequency-band embedding (RoPE alone is
relative, a pitch is an absolute band; its effect was not isolated: pitch came with the visual encoder's separate
appearance path).

Reused from the video model: `Attention`, `FeedForward`, `RMSNorm`, `TimestepEmbedder`, `rope_tables`
(`lumina_rt.model`) and the fused-op boundary (`ops.rms_norm`, `ops.patchify` / `ops.unpatchify`).

This module is the config and the model: `V2AModel.velocity(z, t, frames, cap_feats, cap_mask, video_keep)` is the
batch path (fixed shapes, no host syncs: it exports). Sampling, loading a checkpoint folder and the user-facing
`generate_audio` are `lumina_rt.v2a.pipeline.V2APipeline`'s; training is `lumina_rt.v2a.train`'s.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lumina_rt import ops
from lumina_rt.config import strict_fields
from lumina_rt.errors import ConfigError, InputError
from lumina_rt.model import Attention, FeedForward, RMSNorm, TimestepEmbedder, rope_tables

V2A_CONFIG = "config.json"
V2A_WEIGHTS = "model.safetensors"


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class V2AConfig:
    """Sizes of a V2A model; `from_name` gives the named model sizes (`SIZES`: "builtin", "tiny")."""

    dim: int = 128
    n_layers: int = 6
    n_heads: int = 4
    n_kv_heads: int | None = None
    ffn_hidden: int = 384
    qk_norm: bool = True
    norm_eps: float = 1e-5
    latent_channels: int = 6  # audio latent channels (AudioCodec.channels)
    latent_bands: int = 10  # audio latent frequency bands (n_mels / codec mel block)
    latent_frames_per_video_frame: int = 4
    patch: tuple[int, int] = (2, 2)  # (time, band) latent cells per audio token
    cap_feat_dim: int = 64  # caption feature width (the tiny text encoder's)
    frame_size: int = 32  # video frames are resized to frame_size x frame_size
    visual_pool: int = 8  # the visual encoder's pixel features are average-pooled to visual_pool x visual_pool
    visual_channels: int = 16  # ... from this many per-pixel features
    rope_theta: float = 256.0
    t_scale: float = 1000.0
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))
        if self.dim % self.n_heads:
            raise ConfigError(f"V2AConfig: dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.head_dim % 16:
            raise ConfigError(f"V2AConfig: head_dim={self.head_dim} (dim / n_heads) must be a multiple of 16")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"V2AConfig: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}")
        pt, pb = self.patch
        if self.latent_frames_per_video_frame % pt or self.latent_bands % pb:
            raise ConfigError(
                f"V2AConfig: patch {self.patch} must divide (latent frames per video frame, latent bands) = "
                f"({self.latent_frames_per_video_frame}, {self.latent_bands})"
            )
        if self.frame_size % self.visual_pool:
            raise ConfigError(f"V2AConfig: visual_pool={self.visual_pool} must divide frame_size={self.frame_size}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def token_dim(self) -> int:
        return self.patch[0] * self.patch[1] * self.latent_channels

    @property
    def tokens_per_video_frame(self) -> int:
        return self.latent_frames_per_video_frame // self.patch[0]

    SIZES = {
        "builtin": dict(dim=128, n_layers=6, n_heads=4, ffn_hidden=384),
        "tiny": dict(dim=32, n_layers=2, n_heads=2, ffn_hidden=64),
    }

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> V2AConfig:
        if name not in cls.SIZES:
            raise ConfigError(f"unknown V2A model size {name!r}; known: {sorted(cls.SIZES)}")
        return cls(**{**cls.SIZES[name], **overrides}, name=name)

    def to_kwargs(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("name")
        out["patch"] = list(self.patch)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_kwargs(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_kwargs(cls, raw: dict[str, Any], name: str = "custom") -> V2AConfig:
        """A config from its keywords (`to_kwargs`'s); ConfigError naming unknown ones."""
        return strict_fields(cls, raw, "V2A model", name=name)


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------


class VisualEncoder(nn.Module):
    """Frames [B, 3, F, S, S] in [0, 1] -> per-frame visual features [B, F, dim].

    Per frame, a per-pixel MLP (1x1 convolutions: colour detectors) gives a feature map; two summaries of it, each
    normalised on its own so neither drowns the other:
    - appearance: the map's spatial maximum (which colours / parts are present, whatever the object's size and the
      background) through an MLP;
    - motion: the map average-pooled to `visual_pool`^2 cells (where things are) through an MLP, then two residual
      temporal convolutions (kernel 3) so each frame sees its neighbours (movement, turns).
    """

    def __init__(self, cfg: V2AConfig):
        super().__init__()
        self.pool = cfg.frame_size // cfg.visual_pool
        ch, dim = cfg.visual_channels, cfg.dim
        self.pixel_mlp = nn.Sequential(nn.Conv2d(3, ch, 1), nn.SiLU(), nn.Conv2d(ch, ch, 1), nn.ReLU())
        self.appearance_mlp = nn.Sequential(nn.Linear(ch, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.motion_mlp = nn.Sequential(nn.Linear(ch * cfg.visual_pool**2, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.temporal = nn.ModuleList([nn.Conv1d(dim, dim, 3, padding=1) for _ in range(2)])
        self.appearance_norm = nn.LayerNorm(dim)
        self.motion_norm = nn.LayerNorm(dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = frames.shape
        x = self.pixel_mlp(frames.transpose(1, 2).reshape(b * f, c, h, w) * 2 - 1)  # [B*F, ch, H, W]
        appearance = self.appearance_mlp(x.amax(dim=(2, 3)).reshape(b, f, -1))  # [B, F, D]
        where = F.avg_pool2d(x, self.pool) if self.pool > 1 else x
        y = self.motion_mlp(where.reshape(b, f, -1)).transpose(1, 2)  # [B, D, F]
        for conv in self.temporal:
            y = y + conv(F.silu(y))
        return self.appearance_norm(appearance) + self.motion_norm(y.transpose(1, 2))


@lru_cache(maxsize=32)
def _frame_interp_cpu(frames: int, tokens_per_frame: int, latent_per_frame: int, patch_t: int) -> torch.Tensor:
    """[T_tok, F] linear-interpolation weights from video frames (frame k at time k) to audio token centres."""
    n_tok = frames * tokens_per_frame
    # token j covers latent frames j*pt .. j*pt+pt-1; latent frame i covers mel frames centred at its middle
    centres = (torch.arange(n_tok, dtype=torch.float64) * patch_t + (patch_t - 1) / 2 + 0.5) / latent_per_frame
    pos = centres.clamp(0, frames - 1)
    lo = pos.floor().long().clamp(max=frames - 1)
    hi = (lo + 1).clamp(max=frames - 1)
    frac = pos - lo
    out = torch.zeros(n_tok, frames, dtype=torch.float64)
    out[torch.arange(n_tok), lo] += 1 - frac
    out[torch.arange(n_tok), hi] += frac
    return out.float()


def frame_to_token_weights(cfg: V2AConfig, frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Interpolation weights [T_tok, F]: each audio token's visual feature from the frames around its time."""
    return _frame_interp_cpu(
        int(frames), cfg.tokens_per_video_frame, cfg.latent_frames_per_video_frame, cfg.patch[0]
    ).to(device)


def audio_rope_tables(
    cfg: V2AConfig, time_tokens: int, band_tokens: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """2D RoPE over (audio time, frequency band): the video model's tables with one frame (its 2/8 of the head
    dim stay unrotated), time on the height axis, band on the width axis. cos, sin [T*M, head_dim/2]."""
    return rope_tables(1, time_tokens, band_tokens, cfg.head_dim, cfg.rope_theta, device)


class V2ABlock(nn.Module):
    """Video-text-audio block: sandwich-normed self-attention over audio tokens + tanh-gated co-attention to the
    concatenated [visual; text] context, then the FFN; per-token adaLN scale and tanh gate (zero-initialised)."""

    def __init__(self, cfg: V2AConfig):
        super().__init__()
        dim = cfg.dim
        self.eps = cfg.norm_eps
        self.attention = Attention(dim, cfg.n_heads, cfg.kv_heads, cfg.qk_norm, dim)
        self.feed_forward = FeedForward(dim, cfg.ffn_hidden)
        self.attention_norm1 = RMSNorm(dim, eps=cfg.norm_eps)
        self.attention_norm2 = RMSNorm(dim, eps=cfg.norm_eps)
        self.ffn_norm1 = RMSNorm(dim, eps=cfg.norm_eps)
        self.ffn_norm2 = RMSNorm(dim, eps=cfg.norm_eps)
        self.attention_y_norm = RMSNorm(dim, eps=cfg.norm_eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 4 * dim, bias=True))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        cond: torch.Tensor,
    ) -> torch.Tensor:
        """x [B, N, D]; context [B, L, D], context_mask [B, L] bool; cond [B, N, D] (per-token conditioning)."""
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(cond).chunk(4, dim=-1)
        h = ops.rms_norm(x, self.attention_norm1.weight, self.eps) * (1 + scale_msa)
        h = self.attention(h, cos, sin, self.attention_y_norm(context), context_mask)
        x = x + gate_msa.tanh() * ops.rms_norm(h, self.attention_norm2.weight, self.eps)
        h = self.feed_forward(ops.rms_norm(x, self.ffn_norm1.weight, self.eps) * (1 + scale_mlp))
        return x + gate_mlp.tanh() * ops.rms_norm(h, self.ffn_norm2.weight, self.eps)


class V2AFinalLayer(nn.Module):
    """LayerNorm, per-token adaLN scale, linear to the token's latent cells (zero-initialised)."""

    def __init__(self, cfg: V2AConfig):
        super().__init__()
        self.linear = nn.Linear(cfg.dim, cfg.token_dim, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim, bias=True))
        for lin in (self.linear, self.adaLN_modulation[1]):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale = self.adaLN_modulation(cond)
        return self.linear(F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale))


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


class V2AModel(nn.Module):
    """Lumina-V2A Next-DiT: velocity of audio latents given video frames and a caption."""

    def __init__(self, config: V2AConfig):
        super().__init__()
        self.config = cfg = config
        dim = cfg.dim
        self.x_embedder = nn.Linear(cfg.token_dim, dim, bias=True)
        nn.init.xavier_uniform_(self.x_embedder.weight)
        nn.init.zeros_(self.x_embedder.bias)
        # absolute frequency-band embedding: RoPE gives only relative positions, and a pitch is an absolute band
        self.band_embedder = nn.Parameter(torch.empty(cfg.latent_bands // cfg.patch[1], dim))
        nn.init.normal_(self.band_embedder, std=0.02)
        self.t_embedder = TimestepEmbedder(dim)
        self.visual_encoder = VisualEncoder(cfg)
        self.null_video = nn.Parameter(torch.zeros(dim))  # visual features of "no video" (dropout / CFG negative)
        self.cap_proj = nn.Sequential(nn.LayerNorm(cfg.cap_feat_dim), nn.Linear(cfg.cap_feat_dim, dim))
        # pooled global text and visual features -> the conditioning vector (zero-initialised, as Next-DiT's)
        self.cap_embedder = nn.Sequential(nn.LayerNorm(cfg.cap_feat_dim), nn.Linear(cfg.cap_feat_dim, dim))
        self.video_embedder = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        # high-frame-rate visual features (per audio token) -> per-token conditioning, and added to the token inputs
        self.hfr_embedder = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.hfr_input = nn.Linear(dim, dim)  # zero-initialised: a fresh model ignores the video (ControlNet-style)
        for lin in (self.cap_embedder[1], self.video_embedder[1], self.hfr_input):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.layers = nn.ModuleList([V2ABlock(cfg) for _ in range(cfg.n_layers)])
        self.final_layer = V2AFinalLayer(cfg)
        self.check_inputs = True

    def visual_features(self, frames: torch.Tensor, video_keep: torch.Tensor) -> torch.Tensor:
        """Per-frame features [B, F, D]; rows with video_keep = 0 get the learned "no video" features."""
        vis = self.visual_encoder(frames.to(self.null_video.dtype))
        keep = video_keep.to(vis.dtype)[:, None, None]
        return vis * keep + self.null_video * (1 - keep)

    def velocity(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        frames: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        video_keep: torch.Tensor,
    ) -> torch.Tensor:
        """Velocity [B, C, T, M] of audio latents z [B, C, T, M] at flow time t [B] (0 noise, 1 data).

        frames [B, 3, F, S, S] in [0, 1] with T = F * latent_frames_per_video_frame and S = config.frame_size;
        cap_feats [B, L, cap_feat_dim], cap_mask [B, L] (nonzero: real token); video_keep [B] (1: use the video,
        0: the "no video" condition).
        """
        cfg = self.config
        if self.check_inputs and not ops.tracing():
            check_velocity_inputs(cfg, z, t, frames, cap_feats, cap_mask, video_keep)
        b, _, t_lat, m_lat = z.shape
        n_frames = frames.shape[2]
        pt, pb = cfg.patch
        n_time, n_band = t_lat // pt, m_lat // pb
        tokens = ops.patchify(z[:, :, None], 1, pt, pb)  # [B, N, pt*pb*C], (time, band) order
        x = (self.x_embedder(tokens).view(b, n_time, n_band, cfg.dim) + self.band_embedder).view(b, -1, cfg.dim)
        cos, sin = audio_rope_tables(cfg, n_time, n_band, z.device)

        vis = self.visual_features(frames, video_keep)  # [B, F, D]
        text = self.cap_proj(cap_feats.to(vis.dtype))
        context = torch.cat([vis, text], dim=1)
        context_mask = torch.cat([torch.ones(b, n_frames, dtype=torch.bool, device=z.device), cap_mask.bool()], 1)

        mask = cap_mask.to(cap_feats.dtype).unsqueeze(-1)
        pooled_text = (cap_feats * mask).sum(1) / mask.sum(1)
        c = self.t_embedder(t * cfg.t_scale) + self.cap_embedder(pooled_text) + self.video_embedder(vis.mean(1))
        weights = frame_to_token_weights(cfg, n_frames, z.device).to(vis.dtype)  # [T_tok, F]
        per_token = torch.einsum("tf,bfd->btd", weights, vis)  # [B, T_tok, D]: the frames around each token's time
        hfr = self.hfr_embedder(per_token)
        cond = (c[:, None] + hfr)[:, :, None].expand(b, n_time, n_band, cfg.dim).reshape(b, n_time * n_band, cfg.dim)
        x = x + self.hfr_input(per_token)[:, :, None].expand(b, n_time, n_band, cfg.dim).reshape(b, -1, cfg.dim)

        for layer in self.layers:
            x = layer(x, cos, sin, context, context_mask, cond)
        out = self.final_layer(x, cond)
        return ops.unpatchify(out, 1, n_time * pt, n_band * pb, 1, pt, pb)[:, :, 0]

    forward = velocity

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def check_velocity_inputs(
    cfg: V2AConfig,
    z: torch.Tensor,
    t: torch.Tensor,
    frames: torch.Tensor,
    cap_feats: torch.Tensor,
    cap_mask: torch.Tensor,
    video_keep: torch.Tensor,
) -> None:
    """InputError naming the bad value when `V2AModel.velocity` could not take these inputs."""
    if z.dim() != 4 or z.shape[1] != cfg.latent_channels or z.shape[3] != cfg.latent_bands:
        raise InputError(
            f"z must be [B, {cfg.latent_channels}, T, {cfg.latent_bands}] audio latents, got shape {tuple(z.shape)}"
        )
    b, _, t_lat, _ = z.shape
    if frames.dim() != 5 or frames.shape[0] != b or frames.shape[1] != 3:
        raise InputError(f"frames must be [{b}, 3, F, H, W], got shape {tuple(frames.shape)}")
    size = cfg.frame_size
    if tuple(frames.shape[3:]) != (size, size):
        raise InputError(f"frames must be {size}x{size} pixels (V2APipeline resizes), got {tuple(frames.shape[3:])}")
    want = frames.shape[2] * cfg.latent_frames_per_video_frame
    if t_lat != want:
        raise InputError(
            f"z has {t_lat} latent frames; {frames.shape[2]} video frames need "
            f"{frames.shape[2]} x {cfg.latent_frames_per_video_frame} = {want}"
        )
    if t.shape != (b,) or video_keep.shape != (b,):
        raise InputError(f"t and video_keep must have shape ({b},), got {tuple(t.shape)} and {tuple(video_keep.shape)}")
    if cap_feats.dim() != 3 or cap_feats.shape[0] != b or cap_feats.shape[2] != cfg.cap_feat_dim:
        raise InputError(f"cap_feats must be [{b}, L, {cfg.cap_feat_dim}], got shape {tuple(cap_feats.shape)}")
    if cap_mask.shape != cap_feats.shape[:2]:
        raise InputError(f"cap_mask shape {tuple(cap_mask.shape)} does not match cap_feats [B, L]")
    if bool(((cap_mask != 0).sum(1) == 0).any()):
        raise InputError("every caption row needs at least one unmasked token (the system prompt)")
    for name, tensor in (("z", z), ("t", t), ("frames", frames), ("cap_feats", cap_feats)):
        if not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{name} contains NaN or infinite values")
