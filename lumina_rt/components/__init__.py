"""Pipeline components around the DiT: text encoder and latent space (decoder), declared per checkpoint.

A checkpoint (or engine) directory may hold `components.json`:

    {
      "latent":       {"channels": 16, "temporal_factor": 4, "spatial_factor": 8, "scale": 1.15258426},
      "text_encoder": {"kind": "gemma-2-2b", "path": "/abs/or/relative/dir", ...kind options},
      "decoder":      {"kind": "pixels", ...kind options}
    }

Relative paths are relative to the directory holding `components.json` and are copied with it
(`copy_components`, used when building engines); absolute paths are referenced where they are (the released
Gemma-2-2B and CogVideoX VAE folders, several GB: `lumina-rt build --text-encoder DIR --vae DIR` references them,
and their files' SHA-256 go into the build's components cache key). The kinds are the two tables below
(`TEXT_ENCODERS`, `DECODERS`: kind -> loader, which receives (directory, spec dict) and imports its module when
called); `register_text_encoder(kind)` / `register_decoder(kind)` add a kind at run time.

Kinds: text encoder `gemma-2-2b` (`lumina_rt.components.gemma`, extra `text`: transformers), decoder `cogvideox-vae`
(`lumina_rt.components.cogvideox`, extra `vae`: diffusers), decoder `pixels`, and the built-in model's text encoder
`lumina-tiny-text` and decoder `lumina-tiny-pca` (`lumina_rt.components.tiny`).
Options of the two released kinds: `dtype` ("auto": bf16 on CUDA, fp32 on the CPU; or fp32 / bf16 / fp16),
`device` ("auto": CUDA when there is one); `cogvideox-vae` also `tiling`, `slicing` (booleans, default false).

Frame-count rule (released CogVideoX latents): latent_frames = frames // temporal_factor.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from lumina_rt.builtin import builtin_presets
from lumina_rt.errors import CheckpointError, DecoderError, InputError, TextEncoderError
from lumina_rt.tolerances import DTYPES

if TYPE_CHECKING:
    from lumina_rt.components.tiny import PCAAutoencoder, TinyTextEncoder

logger = logging.getLogger(__name__)

COMPONENTS_FILE = "components.json"
# The released pipeline's latent space: CogVideoX-2b's VAE (16 channels, x4 in time, x8 in space).
RELEASED_LATENT = {"channels": 16, "temporal_factor": 4, "spatial_factor": 8, "scale": 1.15258426}


class TextEncoder(Protocol):
    """prompts -> (cap_feats [B, L, feature_dim] float32, cap_mask [B, L] int64)."""

    feature_dim: int

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


class Decoder(Protocol):
    """latents [B, C, f, h, w] (already divided by the latent scale) -> frames [B, 3, F, H, W] in [0, 1]."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class LatentSpec:
    channels: int
    temporal_factor: int = 1
    spatial_factor: int = 1
    scale: float = 1.0

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(f, h, w) of the latent for a video of frames x height x width pixels."""
        for name, size, factor in (("height", height, self.spatial_factor), ("width", width, self.spatial_factor)):
            if size % factor:
                raise InputError(f"{name}={size} is not a multiple of the latent spatial factor {factor}")
        if frames < 1:
            raise InputError(f"frames must be >= 1, got {frames}")
        return max(1, frames // self.temporal_factor), height // self.spatial_factor, width // self.spatial_factor


class PixelDecoder:
    """Pixel-space 'latents': values in [-1, 1] mapped to [0, 1]."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def _pixels(directory: Path, spec: dict[str, Any]) -> Decoder:
    return PixelDecoder()


def placement(spec: dict[str, Any], error: type[Exception] = CheckpointError) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of a component from its spec's `device` / `dtype` ("auto": CUDA + bf16 where there is a GPU,
    else CPU + fp32, as the released script runs Gemma and the VAE in bf16 on the GPU)."""
    device = spec.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = spec.get("dtype", "auto")
    if dtype == "auto":
        dtype = "bf16" if torch.device(device).type == "cuda" else "fp32"
    if dtype not in DTYPES:
        raise error(f"components.json: unknown dtype {dtype!r}; choose 'auto' or one of {sorted(DTYPES)}")
    return torch.device(device), DTYPES[dtype]


def _gemma(directory: Path, spec: dict[str, Any]) -> TextEncoder:
    from lumina_rt.components.gemma import GemmaTextEncoder

    path = spec.get("path")
    if path is None:
        raise TextEncoderError("components.json: text_encoder of kind 'gemma-2-2b' needs a 'path' to local weights")
    device, dtype = placement(spec, TextEncoderError)
    return GemmaTextEncoder(directory / path, device=device, dtype=dtype)


def _cogvideox(directory: Path, spec: dict[str, Any]) -> Decoder:
    from lumina_rt.components.cogvideox import CogVideoXDecoder

    path = spec.get("path")
    if path is None:
        raise DecoderError("components.json: decoder of kind 'cogvideox-vae' needs a 'path' to local weights")
    device, dtype = placement(spec, DecoderError)
    return CogVideoXDecoder(
        directory / path,
        device=device,
        dtype=dtype,
        tiling=bool(spec.get("tiling", False)),
        slicing=bool(spec.get("slicing", False)),
    )


def released_components(
    text_encoder: str | Path | None = None,
    vae: str | Path | None = None,
    *,
    text_encoder_dtype: str = "auto",
    vae_dtype: str = "auto",
    vae_tiling: bool = False,
    vae_slicing: bool = False,
) -> dict[str, Any]:
    """components.json of the released pipeline: Gemma-2-2B and the CogVideoX VAE referenced by absolute path, the
    released latent spec (its scale read from the VAE's config when there is one) and the released presets."""
    from lumina_rt.sampling import SAMPLE_PRESETS

    out: dict[str, Any] = {"latent": dict(RELEASED_LATENT)}
    if text_encoder is not None:
        path = Path(text_encoder).resolve()
        if not path.is_dir():
            raise TextEncoderError(f"--text-encoder {str(text_encoder)!r} is not a directory")
        out["text_encoder"] = {"kind": "gemma-2-2b", "path": str(path), "dtype": text_encoder_dtype}
    if vae is not None:
        from lumina_rt.components.cogvideox import scaling_factor

        path = Path(vae).resolve()
        if not path.is_dir():
            raise DecoderError(f"--vae {str(vae)!r} is not a directory")
        out["latent"]["scale"] = scaling_factor(path)
        out["decoder"] = {"kind": "cogvideox-vae", "path": str(path), "dtype": vae_dtype, "tiling": vae_tiling,
                          "slicing": vae_slicing}  # fmt: skip
    # The released recipes, the multi-scale 24-fps one first (the build's default preset when the model serves it).
    order = ["f24F96R960-MultiScale", *(n for n in SAMPLE_PRESETS if n != "f24F96R960-MultiScale")]
    out["sampling"] = {name: SAMPLE_PRESETS[name] for name in order}
    return out


def _tiny_text(directory: Path, spec: dict[str, Any]) -> TextEncoder:
    from lumina_rt.components.tiny import TinyTextEncoder

    return TinyTextEncoder.load(directory, spec)


def _tiny_pca(directory: Path, spec: dict[str, Any]) -> Decoder:
    from lumina_rt.components.tiny import PCAAutoencoder

    return PCAAutoencoder.load(directory, spec)


# The component kinds: components.json's "kind" -> loader (directory holding components.json, spec dict).
TEXT_ENCODERS: dict[str, Callable[[Path, dict[str, Any]], TextEncoder]] = {
    "gemma-2-2b": _gemma,
    "lumina-tiny-text": _tiny_text,
}
DECODERS: dict[str, Callable[[Path, dict[str, Any]], Decoder]] = {
    "pixels": _pixels,
    "cogvideox-vae": _cogvideox,
    "lumina-tiny-pca": _tiny_pca,
}


def register_text_encoder(kind: str):
    """Decorator adding a text encoder kind to `TEXT_ENCODERS` (a kind outside lumina_rt, e.g. a test's)."""

    def deco(fn: Callable[[Path, dict[str, Any]], TextEncoder]):
        TEXT_ENCODERS[kind] = fn
        return fn

    return deco


def register_decoder(kind: str):
    """Decorator adding a decoder kind to `DECODERS`."""

    def deco(fn: Callable[[Path, dict[str, Any]], Decoder]):
        DECODERS[kind] = fn
        return fn

    return deco


def write_components(
    directory: str | Path,
    encoder: TinyTextEncoder,
    autoencoder: PCAAutoencoder | None = None,
    sampling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write components.json of a built-in-style checkpoint (latent spec, tiny text encoder, decoder: the PCA
    autoencoder, or pixels without one; sampling presets, the built-in model's by default) and the files it names."""
    directory = Path(directory)
    if autoencoder is None:
        latent = {"channels": 3, "temporal_factor": 1, "spatial_factor": 1, "scale": 1.0}
        decoder = {"kind": "pixels"}
    else:
        latent = {"channels": autoencoder.channels, "temporal_factor": 1, "spatial_factor": autoencoder.factor,
                  "scale": 1.0}  # fmt: skip
        decoder = autoencoder.save(directory)
    spec = {
        "latent": latent,
        "text_encoder": encoder.save(directory),
        "decoder": decoder,
        "sampling": sampling or builtin_presets(),
    }
    (directory / COMPONENTS_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return spec


def read_components(directory: str | Path) -> dict[str, Any]:
    """The parsed components.json of a directory ({} when it has none)."""
    path = Path(directory) / COMPONENTS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {exc}") from None


def latent_spec(directory: str | Path, default_channels: int) -> LatentSpec:
    spec = read_components(directory).get("latent")
    if spec is None:
        return LatentSpec(channels=default_channels)
    return LatentSpec(**spec)


def load_text_encoder(directory: str | Path) -> TextEncoder | None:
    spec = read_components(directory).get("text_encoder")
    if spec is None:
        return None
    kind = spec.get("kind")
    if kind not in TEXT_ENCODERS:
        raise TextEncoderError(f"unknown text encoder kind {kind!r}; known kinds: {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[kind](Path(directory), spec)


def load_decoder(directory: str | Path) -> Decoder | None:
    spec = read_components(directory).get("decoder")
    if spec is None:
        return None
    kind = spec.get("kind")
    if kind not in DECODERS:
        raise DecoderError(f"unknown decoder kind {kind!r}; known kinds: {sorted(DECODERS)}")
    return DECODERS[kind](Path(directory), spec)


def named_paths(comps: dict[str, Any]) -> list[Path]:
    """The paths (as written: relative or absolute) that the text encoder and decoder specs name."""
    out = []
    for key in ("text_encoder", "decoder"):
        spec = comps.get(key) or {}
        for field_name in ("path", "weights", "vocab"):
            if isinstance(spec.get(field_name), str):
                out.append(Path(spec[field_name]))
    return out


def component_files(directory: str | Path) -> list[Path]:
    """Files and folders (relative) that the components of a directory need and that travel with it:
    components.json + the relative paths it names (absolute ones are referenced, not copied)."""
    comps = read_components(directory)
    if not comps:
        return []
    return [Path(COMPONENTS_FILE), *(p for p in named_paths(comps) if not p.is_absolute())]


def copy_components(src: str | Path, dst: str | Path) -> list[Path]:
    """Copy components.json and the relative files it names from src to dst; returns the copied relative paths."""
    src, dst = Path(src), Path(dst)
    copied = []
    for rel in component_files(src):
        s, d = src / rel, dst / rel
        if not s.exists():
            raise CheckpointError(f"components.json in {str(src)!r} names {str(rel)!r}, which does not exist")
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, dirs_exist_ok=True)
        else:
            shutil.copy2(s, d)
        copied.append(rel)
    return copied
