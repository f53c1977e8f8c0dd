"""Lumina-V2A pipeline: frames (+ optional prompt) -> waveform, with a V2A model, its audio codec and text encoder.

Sampling goes through the shared sampler (`lumina_rt.sampling.sample_euler`: the shifted time grid, the guided
velocity, the Euler step); this module only says what V2A's condition is. The sampler's per-sample scalar condition
(the video model's motion score) carries V2A's `video_keep`: 1 for the positive branch (the video), 0 for the
negative one ("no video, no caption"), so guidance is v = v_pos + g (v_pos - v_neg).

`V2APipeline.generate_audio(frames, prompt)` is the user-facing call; `V2APipeline.builtin()` loads the shipped
model (lumina_rt/builtin/v2a/).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lumina_rt.config import patch_combo_name
from lumina_rt.errors import CheckpointError, ConfigError, InputError
from lumina_rt.sampling import Conditioning, SampleConfig, sample_euler
from lumina_rt.v2a.codec import AudioCodec, AudioSpec
from lumina_rt.v2a.model import V2A_CONFIG, V2A_WEIGHTS, V2AConfig, V2AModel


@dataclass
class V2ASampling:
    """Sampling defaults of a V2A checkpoint: Euler steps (grid points), time shift, CFG scale."""

    steps: int = 16
    shift: float = 2.0
    guidance: float = 2.0

    def sample_config(self, config: V2AConfig, steps: int, guidance: float) -> SampleConfig:
        """The shared sampler's recipe: `steps` grid points shifted by `shift`, constant CFG `guidance` against "no
        video" (condition 1 vs 0), no renorm; P names the model's one patch (its velocity ignores it)."""
        return SampleConfig(
            P=patch_combo_name(*config.patch), step=steps, ts=self.shift, renorm=-1.0, cfg=guidance, motion=1.0,
            negMotion=0.0, name="v2a",
        )  # fmt: skip


class V2APipeline:
    """Frames (+ optional prompt) -> waveform, with a V2A model, its audio codec + vocoder and text encoder."""

    def __init__(
        self,
        model: V2AModel,
        codec: AudioCodec,
        encoder: Any,
        sampling: V2ASampling | None = None,
        frames_range: tuple[int, int] = (8, 16),
    ):
        self._model = model.eval()
        self.codec = codec
        self.spec: AudioSpec = codec.spec
        self.encoder = encoder  # lumina_rt.components.tiny.TinyTextEncoder
        self.sampling = sampling or V2ASampling()
        self.min_frames, self.max_frames = int(frames_range[0]), int(frames_range[1])
        self.frame_size: tuple[int, int] | None = None  # any frame size: resized to model_frame_size
        size = model.config.frame_size
        self.model_frame_size = (size, size)
        if codec.channels != model.config.latent_channels or codec.latent_bands != model.config.latent_bands:
            raise ConfigError(
                f"audio codec latents [{codec.channels} channels, {codec.latent_bands} bands] do not match the model's "
                f"[{model.config.latent_channels}, {model.config.latent_bands}]"
            )

    @property
    def model(self) -> V2AModel:
        return self._model

    # ---------------------------------------------------------------- loading / saving
    @classmethod
    def from_dir(cls, directory: str | Path) -> V2APipeline:
        """Load a V2A checkpoint folder (config.json, model.safetensors, audio codec, text encoder)."""
        from lumina_rt.components.tiny import TinyTextEncoder

        directory = Path(directory)
        path = directory / V2A_CONFIG
        if not path.is_file():
            raise CheckpointError(f"{str(directory)!r} is not a V2A checkpoint: no {V2A_CONFIG}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{str(path)!r} is not valid JSON: {exc}") from None
        for key in ("model", "audio", "text_encoder"):
            if key not in raw:
                raise CheckpointError(f"{str(path)!r} lacks the {key!r} section")
        cfg = V2AConfig.from_kwargs(raw["model"], name=raw.get("name", directory.name))
        model = V2AModel(cfg)
        try:
            state = load_file(str(directory / V2A_WEIGHTS))
        except OSError as exc:
            raise CheckpointError(f"cannot read {str(directory / V2A_WEIGHTS)!r}: {exc}") from None
        try:
            model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{str(directory / V2A_WEIGHTS)!r} does not fit its config: {exc}") from None
        codec = AudioCodec.load(directory, AudioSpec.from_dict(raw["audio"]))
        encoder = TinyTextEncoder.load(directory, raw["text_encoder"])
        sampling = V2ASampling(**raw.get("sampling", {}))
        frames = raw.get("frames", [8, 16])
        return cls(model, codec, encoder, sampling, (int(frames[0]), int(frames[1])))

    @classmethod
    def builtin(cls) -> V2APipeline:
        """The shipped model (lumina_rt/builtin/v2a/)."""
        from lumina_rt.builtin import builtin_v2a_dir

        return cls.from_dir(builtin_v2a_dir())

    # ---------------------------------------------------------------- inputs
    def prepare_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Check one clip [3, F, H, W] in [0, 1] and resize it to the model's frame size -> [3, F, S, S]."""
        if not isinstance(frames, torch.Tensor):
            raise InputError(f"frames must be a torch.Tensor [3, F, H, W], got {type(frames).__name__}")
        if frames.dim() != 4:
            raise InputError(f"frames must be one clip [3, F, H, W], got shape {tuple(frames.shape)}")
        if frames.shape[0] != 3:
            raise InputError(f"frames must have 3 (RGB) channels first, got {frames.shape[0]}: {tuple(frames.shape)}")
        n = frames.shape[1]
        if not self.min_frames <= n <= self.max_frames:
            raise InputError(
                f"frames has F={n} video frames; this V2A model takes {self.min_frames} to {self.max_frames} frames "
                f"at {self.spec.fps} fps"
            )
        if not frames.is_floating_point():
            raise InputError(f"frames must be float in [0, 1], got dtype {frames.dtype}")
        if not bool(torch.isfinite(frames).all()):
            raise InputError("frames contains NaN or infinite values")
        x = frames.float().clamp(0, 1).transpose(0, 1)  # [F, 3, H, W]
        size = self.model_frame_size
        if tuple(x.shape[2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x.transpose(0, 1).contiguous()

    def encode_prompts(self, prompts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.encode(["" if p is None else p for p in prompts])

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate_latents(
        self,
        frames: torch.Tensor,
        prompts: list[str | None],
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        progress: bool = True,
    ) -> torch.Tensor:
        """Audio latents [B, C, T, M] for prepared frames [B, 3, F, S, S] (the shared Euler sampler on the shifted
        time grid, CFG against "no video, no caption": v = v_pos + g (v_pos - v_neg))."""
        steps = self.sampling.steps if steps is None else int(steps)
        g = self.sampling.guidance if guidance is None else float(guidance)
        if steps < 2:
            raise InputError(f"steps must be >= 2 grid points, got {steps}")
        if not math.isfinite(g) or g < 0:
            raise InputError(f"guidance must be a finite number >= 0, got {g}")
        cfg = self._model.config
        b, n_frames = frames.shape[0], frames.shape[2]
        gen = torch.Generator().manual_seed(int(seed))
        shape = (b, cfg.latent_channels, n_frames * cfg.latent_frames_per_video_frame, cfg.latent_bands)
        z = torch.randn(shape, generator=gen)
        pos = Conditioning(*self.encode_prompts(prompts))
        neg = Conditioning(*self.encode_prompts([None] * b)) if g > 0 else None
        both = torch.cat([frames, frames]) if neg is not None else frames  # guided: positive rows, then negative

        def velocity(
            x: torch.Tensor, t: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor, _: str
        ) -> torch.Tensor:
            return self._model.velocity(x, t, frames if x.shape[0] == b else both, feats, mask, keep)

        config = self.sampling.sample_config(cfg, steps, g)
        return sample_euler(velocity, z, pos, neg, config, progress=progress, desc="v2a")

    @torch.no_grad()
    def generate_batch(
        self,
        frames: torch.Tensor,
        prompts: list[str | None] | None = None,
        *,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        progress: bool = True,
    ) -> torch.Tensor:
        """Waveforms [B, samples] for clips [B, 3, F, H, W] of equal length (one noise draw for the batch)."""
        if frames.dim() != 5:
            raise InputError(f"frames must be a batch of clips [B, 3, F, H, W], got shape {tuple(frames.shape)}")
        prompts = [None] * frames.shape[0] if prompts is None else list(prompts)
        if len(prompts) != frames.shape[0]:
            raise InputError(f"{len(prompts)} prompts for {frames.shape[0]} clips")
        x = torch.stack([self.prepare_frames(f) for f in frames])
        z = self.generate_latents(x, prompts, seed, steps, guidance, progress)
        return self.codec.decode_wave(z, seed=int(seed)).float()

    def generate_audio(
        self,
        frames: torch.Tensor,
        prompt: str | None = None,
        *,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        progress: bool = True,
    ) -> torch.Tensor:
        """frames [3, F, H, W] float in [0, 1] (one clip at spec.fps) -> waveform float32 [F * sample_rate // fps]
        in [-1, 1]. InputError naming the bad value for a frame count outside [min_frames, max_frames], wrong
        channels, NaN."""
        x = self.prepare_frames(frames)[None]
        z = self.generate_latents(x, [prompt], seed, steps, guidance, progress)
        return self.codec.decode_wave(z, seed=int(seed))[0].float().contiguous()
