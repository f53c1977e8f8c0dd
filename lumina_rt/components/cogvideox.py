"""The released latent decoder: CogVideoX-2b's VAE through diffusers (optional, needs `diffusers` and its weights).

The released recipe (Alpha-VLLM/Lumina-Video `generate.py`): `AutoencoderKLCogVideoX`, `vae.decode(latents /
1.15258426).sample`, then `(x + 1) / 2` clamped to [0, 1]. Here the division by the scaling factor is the
pipeline's (the engine directory's latent spec `scale`, written by the build from the VAE's config): `decode`
receives latents already divided, so the factor is applied exactly once.

Frames out of the CogVideoX VAE for f latent frames: 4·f when f is even, 4·(f − 1) + 1 when f is odd (its decoder
upsamples time in pairs of latent frames and keeps a lone first frame). The released sampler asks for
frames // 4 latent frames, so 96 frames (24 latent) decode to 96 frames; 8 frames to 8; 12 frames to 9.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lumina_rt.errors import DecoderError
from lumina_rt.thirdparty import import_optional

RELEASED_SCALING_FACTOR = 1.15258426


def import_diffusers():
    """The `diffusers` module, or DecoderError naming the package and the extra that installs it."""
    try:
        return import_optional("diffusers")
    except ImportError:
        raise DecoderError(
            "the CogVideoX VAE decoder needs the 'diffusers' package, which is not installed: "
            "pip install 'lumina-rt[vae]'"
        ) from None


def scaling_factor(path: str | os.PathLike) -> float:
    """The VAE's latent scaling factor: its config.json's `scaling_factor`, else the released 1.15258426."""
    config = Path(path) / "config.json"
    try:
        value = json.loads(config.read_text()).get("scaling_factor")
    except (OSError, json.JSONDecodeError) as exc:
        raise DecoderError(f"cannot read the VAE config {str(config)!r}: {exc}") from None
    return float(value) if value is not None else RELEASED_SCALING_FACTOR


def decoded_frames(latent_frames: int) -> int:
    """Frames the CogVideoX VAE decodes f latent frames into (see the module docstring)."""
    f = int(latent_frames)
    return 4 * f if f % 2 == 0 else 4 * (f - 1) + 1


class CogVideoXDecoder:
    """diffusers `AutoencoderKLCogVideoX` from a local directory (diffusers layout); no download is attempted.

    `decode(latents [B, 16, f, h, w])` (already divided by the scaling factor) -> frames [B, 3, F, 8h, 8w] float32
    in [0, 1] on the CPU. `tiling` / `slicing` turn on diffusers' tiled (spatial tiles) and sliced (one video at
    a time) decoding, which bound the decoder's memory at large sizes.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        tiling: bool = False,
        slicing: bool = False,
    ):
        diffusers = import_diffusers()
        if not os.path.isdir(path):
            raise DecoderError(
                f"CogVideoX VAE weights not found at {str(path)!r}: pass a local directory in the diffusers layout "
                "(config.json + diffusion_pytorch_model.safetensors), e.g. the 'vae' folder of CogVideoX-2b"
            )
        try:
            vae = diffusers.AutoencoderKLCogVideoX.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DecoderError(f"cannot load the CogVideoX VAE from {str(path)!r}: {exc}") from None
        if tiling:
            vae.enable_tiling()
        if slicing:
            vae.enable_slicing()
        self.vae = vae.to(device).eval()
        self.path = str(path)
        self.device = torch.device(device)
        self.dtype = dtype
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", None) or RELEASED_SCALING_FACTOR)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode(latents.to(self.device, self.dtype)).sample
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()
