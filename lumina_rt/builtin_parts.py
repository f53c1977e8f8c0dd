"""The built-in model's parts: a tiny word-level text encoder, pixel latents, and reference generation.

Registered in `lumina_rt.components` (imported automatically from there):

- text encoder kind ``"lumina-tiny-text"``: a fixed vocabulary (``vocab`` file, one word a line) and a fixed
  embedding table (``weights`` safetensors, key ``embedding`` [V, D]); unknown words map to ``<unk>`` with one
  logged warning per `encode` call naming them (``strict=True``: a TextEncoderError instead).
  A prompt is encoded as ``<system prompt> <sep> <prompt>``; the system prompt defaults to the spec's
  ``system_prompt`` (the ``toon`` source), so an empty prompt gives the caption-dropout (negative) condition.
- decoder kind ``"lumina-tiny-pca"``: a small linear autoencoder fitted here (PCA of 4 x 4 pixel blocks,
  12 whitened components), latents [12, F, H/4, W/4]; ``"pixels"`` (components.py) also works for pixel models.

`builtin_dir()` is the shipped model's folder; `generate_reference(...)` samples it with the reference torch
model and sampler, without the engine runtime; `builtin_engines()` builds (once) and returns its engines.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lumina_rt.components import (
    read_components,
    register_decoder,
    register_text_encoder,
)
from lumina_rt.errors import CheckpointError, InputError, TextEncoderError

logger = logging.getLogger(__name__)

TEXT_KIND = "lumina-tiny-text"
TEXT_WEIGHTS = "text_encoder.safetensors"
TEXT_VOCAB = "text_vocab.txt"
AE_KIND = "lumina-tiny-pca"
AE_WEIGHTS = "autoencoder.safetensors"
# Sampling recipes of the built-in model: CFG against the system-prompt-only caption with a mid-range motion score
# (1.4 px/frame, a motion-contrast negative like the released presets' conditioned negMotion: it pushes slow
# prompts slower and fast ones faster), strong while t is small (where the direction of motion is decided), then
# off (no negative branch), as the released presets switch guidance off late. Chosen on tuning seeds 1-3 and
# 6-14 (432 videos each); late CFG 3 gave the same direction but lower motion correlation, an unconditioned
# negative motion 0.007-0.013 lower motion correlation (docs/training.md).
BUILTIN_SINGLE = dict(P="1x2", step=16, ts=2.0, cfg=[8.0, [0.3, 0.0]], motion=1.2, negMotion=1.4)
# Multi-scale: 2x2 patches (half the tokens) until t = 0.4, then 1x2, guidance 6 until t = 0.4. The released-style
# ["2x4", [0.1, "2x2"], [0.3, "1x2"]] scored 58 % direction against 74.5 % for 2x2 -> 1x2 on an earlier model: the
# 2x4 embedder's 2 x 2 token grid per frame pair is presumably too coarse to fix the direction early.
BUILTIN_MULTI = {**BUILTIN_SINGLE, "P": ["2x2", [0.4, "1x2"]], "cfg": [6.0, [0.4, 0.0]]}


def builtin_presets() -> dict[str, dict[str, Any]]:
    """The built-in sampling presets; the first is the engines' default (multi-scale: better direction, cheaper)."""
    return {"multi_scale": dict(BUILTIN_MULTI), "single_scale": dict(BUILTIN_SINGLE)}


def builtin_dir() -> Path:
    """Folder of the shipped built-in model (config.json, model.safetensors, components.json, ...)."""
    return Path(__file__).resolve().parent / "builtin"


# Shapes the built-in model's engines serve, and the size `lumina-rt generate --builtin` makes without sizes.
BUILTIN_SHAPES = dict(resolutions=((32, 32), (64, 64)), frames=(1, 8, 16))
BUILTIN_DEFAULT_SIZE = (8, 32, 32)  # frames, height, width


def builtin_v2a_source() -> Path | None:
    """The shipped sound model's folder (lumina_rt/builtin/v2a/), or None while it is not there."""
    from lumina_rt.v2a.model import builtin_v2a_dir

    folder = builtin_v2a_dir()
    return folder if (folder / "config.json").is_file() else None


def builtin_engines(precision: str = "fp32") -> Path:
    """Engines of the built-in model (and of its sound model, when shipped), built on first use into the cache
    (LUMINA_RT_CACHE, ~/.cache/lumina_rt).

    fp32: the best target here (TensorRT, else ONNX, else torch); bf16: torch engines (a CPU with native bf16
    arithmetic, or a GPU), in their own folder.
    """
    from lumina_rt.engines.profiles import ServeShapes
    from lumina_rt.export.build_engines import build

    cache = Path(os.environ.get("LUMINA_RT_CACHE", Path.home() / ".cache" / "lumina_rt"))
    out = cache / "engines" / ("builtin" if precision == "fp32" else f"builtin-{precision}")
    target = "auto" if precision == "fp32" else "torch"
    shapes = ServeShapes(**BUILTIN_SHAPES)
    report = build(builtin_dir(), out, target=target, precision=precision, shapes=shapes, v2a=builtin_v2a_source())
    if report.changed:
        logger.info("built the built-in model's engines in %s (%.0f s)", out, report.seconds)
    return out


# ------------------------------------------------------------------------------------------------
# Text encoder
# ------------------------------------------------------------------------------------------------


def fixed_embedding(vocab_size: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Deterministic embedding table [V, D]: orthogonal rows (when V <= D) scaled to unit RMS; <pad> is zero."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(max(vocab_size, dim), dim, generator=gen)
    q, _ = torch.linalg.qr(a)  # orthonormal columns
    table = q[:vocab_size] if vocab_size <= dim else a / dim**0.5
    table = table * (dim**0.5) / table.norm(dim=1, keepdim=True).clamp_min(1e-6) if vocab_size <= dim else table
    table[0] = 0.0
    return table.contiguous()


class TinyTextEncoder:
    """Word-level encoder: tokens -> fixed embedding rows. `encode(prompts)` -> (cap_feats, cap_mask)."""

    def __init__(self, vocab: Sequence[str], embedding: torch.Tensor, system_prompt: str = ""):
        if embedding.shape[0] != len(vocab):
            raise TextEncoderError(f"embedding has {embedding.shape[0]} rows for a vocabulary of {len(vocab)} words")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.embedding = embedding.float()
        self.feature_dim = int(embedding.shape[1])
        self.system_prompt = system_prompt

    @classmethod
    def create(cls, dim: int = 64, seed: int = 0) -> TinyTextEncoder:
        from lumina_rt.data.captions import DEFAULT_SOURCE, SYSTEM_PROMPTS, vocabulary

        vocab = vocabulary()
        return cls(vocab, fixed_embedding(len(vocab), dim, seed), SYSTEM_PROMPTS[DEFAULT_SOURCE])

    @classmethod
    def load(cls, directory: str | Path, spec: dict[str, Any]) -> TinyTextEncoder:
        directory = Path(directory)
        try:
            vocab = (directory / spec.get("vocab", TEXT_VOCAB)).read_text().split("\n")
            embedding = load_file(str(directory / spec.get("weights", TEXT_WEIGHTS)))["embedding"]
        except (OSError, KeyError) as exc:
            raise TextEncoderError(f"cannot load the {TEXT_KIND} text encoder from {str(directory)!r}: {exc}") from None
        return cls([w for w in vocab if w], embedding, spec.get("system_prompt", ""))

    def save(self, directory: str | Path) -> dict[str, Any]:
        """Write the vocabulary and table into `directory`; returns the components.json spec."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / TEXT_VOCAB).write_text("\n".join(self.vocab) + "\n")
        save_file({"embedding": self.embedding.contiguous()}, str(directory / TEXT_WEIGHTS))
        return dict(
            kind=TEXT_KIND,
            weights=TEXT_WEIGHTS,
            vocab=TEXT_VOCAB,
            feature_dim=self.feature_dim,
            system_prompt=self.system_prompt,
        )

    def words(self, prompt: str, system_prompt: str | None = None) -> list[str]:
        """The words a prompt is encoded from: `<system prompt> <sep> <prompt>`."""
        from lumina_rt.data.captions import tokenize

        system = self.system_prompt if system_prompt is None else system_prompt
        return [*tokenize(system), "<sep>", *tokenize(prompt)]

    def token_ids(self, prompt: str, system_prompt: str | None = None) -> list[int]:
        unk = self.index["<unk>"]
        return [self.index.get(w, unk) for w in self.words(prompt, system_prompt)]

    def unknown_words(self, prompts: Sequence[str], system_prompts: Sequence[str | None] | None = None) -> list[str]:
        """Words of the prompts outside the vocabulary (each once, in order of appearance)."""
        systems = list(system_prompts) if system_prompts is not None else [None] * len(prompts)
        seen = [w for p, s in zip(prompts, systems) for w in self.words(p, s) if w not in self.index]
        return list(dict.fromkeys(seen))

    def encode(
        self, prompts: list[str], system_prompts: Sequence[str | None] | None = None, strict: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cap_feats [B, L, D], cap_mask [B, L]). Unknown words become `<unk>` with one warning naming them;
        with `strict`, they raise TextEncoderError instead."""
        if isinstance(prompts, str):
            raise InputError("encode takes a list of prompts, got a single string")
        systems = list(system_prompts) if system_prompts is not None else [None] * len(prompts)
        if len(systems) != len(prompts):
            raise InputError(f"{len(systems)} system prompts for {len(prompts)} prompts")
        unknown = self.unknown_words(prompts, systems)
        if unknown:
            what = f"{len(unknown)} word(s) outside the text encoder's {len(self.vocab)}-word vocabulary: {unknown}"
            if strict:
                raise TextEncoderError(what)
            logger.warning("%s; they are encoded as <unk>, which means nothing to the model", what)
        ids = [self.token_ids(p, s) for p, s in zip(prompts, systems)]
        length = max(len(i) for i in ids)
        tok = torch.zeros(len(ids), length, dtype=torch.long)
        mask = torch.zeros(len(ids), length, dtype=torch.int64)
        for row, seq in enumerate(ids):
            tok[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return self.embedding[tok], mask


@register_text_encoder(TEXT_KIND)
def _tiny_text(directory: Path, spec: dict[str, Any]) -> TinyTextEncoder:
    return TinyTextEncoder.load(directory, spec)


# ------------------------------------------------------------------------------------------------
# Latent space: a linear autoencoder (PCA of pixel blocks), fitted on the synthetic data
# ------------------------------------------------------------------------------------------------


class PCAAutoencoder:
    """Pixels [B, 3, F, H, W] in [-1, 1] <-> whitened latents [B, C, F, H/f, W/f] (f x f blocks, C components).

    Fitted by PCA on training clips; each component is standardised (zero mean, unit variance), so the
    flow's unit noise is equally loud in every component, and residual noise in low-variance (detail)
    components decodes to small pixel changes. `decode` (the Decoder protocol) returns frames in [0, 1].
    """

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, z_mean: torch.Tensor, z_std: torch.Tensor, factor: int):
        self.mean, self.basis = mean.float(), basis.float()  # [3 f f], [3 f f, C]
        self.z_mean, self.z_std = z_mean.float(), z_std.float()  # [C]
        self.factor = int(factor)
        self.channels = int(basis.shape[1])

    @classmethod
    def fit(cls, x: torch.Tensor, channels: int = 12, factor: int = 4) -> PCAAutoencoder:
        blocks = _to_blocks(x, factor).double()
        mean = blocks.mean(0)
        _, _, vh = torch.linalg.svd(blocks - mean, full_matrices=False)
        basis = vh[:channels].T.contiguous()
        basis = basis * torch.where(basis.sum(0) < 0, -1.0, 1.0)  # deterministic signs
        z = (blocks - mean) @ basis
        return cls(mean, basis, z.mean(0), z.std(0).clamp_min(1e-6), factor)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        b, _, f, h, w = x.shape
        z = (_to_blocks(x.float(), self.factor) - self.mean) @ self.basis
        z = (z - self.z_mean) / self.z_std
        k = self.factor
        return z.reshape(b, f, h // k, w // k, self.channels).permute(0, 4, 1, 2, 3).contiguous()

    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels in [-1, 1] (unclamped)."""
        b, c, f, hl, wl = latents.shape
        z = latents.float().permute(0, 2, 3, 4, 1).reshape(-1, c) * self.z_std + self.z_mean
        blocks = z @ self.basis.T + self.mean
        k = self.factor
        x = blocks.reshape(b, f, hl, wl, 3, k, k).permute(0, 4, 1, 2, 5, 3, 6)
        return x.reshape(b, 3, f, hl * k, wl * k)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((self.decode_pixels(latents) + 1) / 2).clamp(0.0, 1.0)

    def state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "basis": self.basis, "z_mean": self.z_mean, "z_std": self.z_std,
                "factor": torch.tensor(self.factor)}  # fmt: skip

    def save(self, directory: str | Path) -> dict[str, Any]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state().items()}, str(directory / AE_WEIGHTS))
        return {"kind": AE_KIND, "weights": AE_WEIGHTS}

    @classmethod
    def load(cls, directory: str | Path, spec: dict[str, Any] | None = None) -> PCAAutoencoder:
        path = Path(directory) / (spec or {}).get("weights", AE_WEIGHTS)
        try:
            s = load_file(str(path))
        except OSError as exc:
            raise CheckpointError(f"cannot load the {AE_KIND} autoencoder {str(path)!r}: {exc}") from None
        return cls(s["mean"], s["basis"], s["z_mean"], s["z_std"], int(s["factor"]))


def _to_blocks(x: torch.Tensor, k: int) -> torch.Tensor:
    b, c, f, h, w = x.shape
    if h % k or w % k:
        raise InputError(f"frame size {h}x{w} is not a multiple of the autoencoder block {k}")
    return x.reshape(b, c, f, h // k, k, w // k, k).permute(0, 2, 3, 5, 1, 4, 6).reshape(-1, c * k * k)


@register_decoder(AE_KIND)
def _tiny_pca(directory: Path, spec: dict[str, Any]) -> PCAAutoencoder:
    return PCAAutoencoder.load(directory, spec)


# ------------------------------------------------------------------------------------------------
# Components of a built-in-style checkpoint
# ------------------------------------------------------------------------------------------------


def write_components(
    directory: str | Path,
    encoder: TinyTextEncoder,
    autoencoder: PCAAutoencoder | None = None,
    sampling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write components.json (latent spec, tiny text encoder, decoder) and the files they name."""
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
    (directory / "components.json").write_text(json.dumps(spec, indent=2) + "\n")
    return spec


def sample_presets(directory: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The checkpoint's recommended sampling configs ("single_scale", "multi_scale")."""
    comps = read_components(builtin_dir() if directory is None else directory)
    return comps.get("sampling") or builtin_presets()


# ------------------------------------------------------------------------------------------------
# Reference generation (torch model + the one pipeline)
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_reference(
    prompt: str | list[str],
    frames: int = 8,
    height: int = 32,
    width: int = 32,
    steps: int | None = None,
    sample: str | dict[str, Any] = "single_scale",
    cfg: float | None = None,
    motion: float | list[float] | None = None,
    seed: int = 0,
    directory: str | Path | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Videos [B, 3, F, H, W] in [0, 1] (B = number of prompts) from the reference model, through `Pipeline`.

    `sample`: "single_scale" / "multi_scale" (the checkpoint's presets) or a SampleConfig dict; `motion` may
    be one score per prompt (negative: unconditioned). Negative condition: the system prompt alone.
    """
    from lumina_rt.pipeline import Pipeline

    pipeline = Pipeline.from_checkpoint(builtin_dir() if directory is None else directory)
    if pipeline.decoder() is None:
        raise TextEncoderError(f"{str(pipeline.components_dir)!r} has no components.json naming a decoder")
    per_item = list(motion) if isinstance(motion, (list, tuple)) else None
    result = pipeline.generate(
        prompt,
        frames=frames,
        height=height,
        width=width,
        preset=sample,
        steps=steps,
        cfg=cfg,
        motion=None if motion is None or per_item is not None else float(motion),
        item_motion=per_item,
        seed=seed,
        progress=progress,
    )
    assert result.frames is not None
    return result.frames
