"""Pipeline components around the DiT: text encoder and latent space (decoder), declared per checkpoint.

A checkpoint (or engine) directory may hold `components.json`:

    {
      "latent":       {"channels": 16, "temporal_factor": 4, "spatial_factor": 8, "scale": 1.15258426},
      "text_encoder": {"kind": "gemma-2-2b", "path": "/abs/or/relative/dir", ...kind options},
      "decoder":      {"kind": "pixels", ...kind options}
    }

Paths are relative to the directory holding `components.json`. A kind is registered with
`register_text_encoder(kind)` / `register_decoder(kind)`; its loader receives (directory, spec dict).
`copy_components(src, dst)` copies the file and everything its specs name (used when building engines).

Frame-count rule (released CogVideoX latents): latent_frames = frames // temporal_factor.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from lumina_rt.errors import CheckpointError, InputError, TextEncoderError

logger = logging.getLogger(__name__)

COMPONENTS_FILE = "components.json"


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


_TEXT_ENCODERS: dict[str, Callable[[Path, dict[str, Any]], TextEncoder]] = {}
_DECODERS: dict[str, Callable[[Path, dict[str, Any]], Decoder]] = {}


def register_text_encoder(kind: str):
    def deco(fn: Callable[[Path, dict[str, Any]], TextEncoder]):
        _TEXT_ENCODERS[kind] = fn
        return fn

    return deco


def register_decoder(kind: str):
    def deco(fn: Callable[[Path, dict[str, Any]], Decoder]):
        _DECODERS[kind] = fn
        return fn

    return deco


@register_decoder("pixels")
def _pixels(directory: Path, spec: dict[str, Any]) -> Decoder:
    return PixelDecoder()


@register_text_encoder("gemma-2-2b")
def _gemma(directory: Path, spec: dict[str, Any]) -> TextEncoder:
    from lumina_rt.text import GemmaTextEncoder

    path = spec.get("path")
    if path is None:
        raise TextEncoderError("components.json: text_encoder of kind 'gemma-2-2b' needs a 'path' to local weights")
    return GemmaTextEncoder(directory / path)


def _import_kind_modules() -> None:
    """Modules that register more kinds (the built-in model's encoder and decoder)."""
    import importlib

    for name in ("lumina_rt.builtin_parts",):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


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
    _import_kind_modules()
    kind = spec.get("kind")
    if kind not in _TEXT_ENCODERS:
        raise TextEncoderError(f"unknown text encoder kind {kind!r}; known kinds: {sorted(_TEXT_ENCODERS)}")
    return _TEXT_ENCODERS[kind](Path(directory), spec)


def load_decoder(directory: str | Path) -> Decoder | None:
    spec = read_components(directory).get("decoder")
    if spec is None:
        return None
    _import_kind_modules()
    kind = spec.get("kind")
    if kind not in _DECODERS:
        raise CheckpointError(f"unknown decoder kind {kind!r}; known kinds: {sorted(_DECODERS)}")
    return _DECODERS[kind](Path(directory), spec)


def component_files(directory: str | Path) -> list[Path]:
    """Files and folders (relative) that the components of a directory need: components.json + named paths."""
    comps = read_components(directory)
    if not comps:
        return []
    out = [Path(COMPONENTS_FILE)]
    for key in ("text_encoder", "decoder"):
        spec = comps.get(key) or {}
        for field_name in ("path", "weights", "vocab"):
            if isinstance(spec.get(field_name), str):
                out.append(Path(spec[field_name]))
    return out


def copy_components(src: str | Path, dst: str | Path) -> list[Path]:
    """Copy components.json and the files it names from src to dst; returns the copied relative paths."""
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
