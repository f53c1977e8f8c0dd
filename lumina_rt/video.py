"""Write generated frames as MP4 (libx264, yuv420p) or GIF with imageio + imageio-ffmpeg (ffmpeg ships in the wheel)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lumina_rt.errors import InputError

SUFFIXES = (".mp4", ".gif")


def to_uint8(frames: torch.Tensor, scale: int = 1) -> np.ndarray:
    """[3, F, H, W] or [B, 3, F, H, W] in [0, 1] -> [F, H', W', 3] uint8 (a batch side by side, even sizes for MP4)."""
    if frames.dim() == 5:
        frames = torch.cat(list(frames), dim=-1)  # B videos left to right
    if frames.dim() != 4 or frames.shape[0] not in (1, 3):
        raise InputError(f"frames must be [3, F, H, W] or [B, 3, F, H, W], got shape {tuple(frames.shape)}")
    if frames.shape[0] == 1:
        frames = frames.expand(3, -1, -1, -1)
    arr = (frames.detach().float().clamp(0, 1).permute(1, 2, 3, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return arr


def latent_preview(latents: torch.Tensor) -> torch.Tensor:
    """Latents [B, C, f, h, w] shown as frames: the first three channels (or one, as grey) scaled to [0, 1]."""
    x = latents[:, :3].float()
    lo = x.amin(dim=(2, 3, 4), keepdim=True)
    hi = x.amax(dim=(2, 3, 4), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6)


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: int = 8, scale: int = 1) -> Path:
    """Write frames (see `to_uint8`) to `path` (.mp4 or .gif); returns the path."""
    import imageio.v2 as imageio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"video path {str(path)!r} must end in one of {SUFFIXES}")
    arr = to_uint8(frames, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        imageio.mimsave(path, list(arr), duration=1000.0 / fps, loop=0)
    else:
        imageio.mimsave(path, list(arr), fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1)
    return path
