"""The built-in model's text encoder and latent space (components.json kinds "lumina-tiny-text", "lumina-tiny-pca").

- `TinyTextEncoder` (kind ``"lumina-tiny-text"``): a fixed vocabulary (``vocab`` file, one word a line) and a fixed
  embedding table (``weights`` safetensors, key ``embedding`` [V, D]); unknown words map to ``<unk>`` with one
  logged warning per `encode` call naming them (``strict=True``: a TextEncoderError instead).
  A prompt is encoded as ``<system prompt> <sep> <prompt>``; the system prompt defaults to the spec's
  ``system_prompt`` (the ``toon`` source), so an empty prompt gives the caption-dropout (negative) condition.
- `PCAAutoencoder` (decoder kind ``"lumina-tiny-pca"``): a small linear autoencoder fitted on the training clips
  (PCA of 4 x 4 pixel blocks, 12 whitened components), latents [12, F, H/4, W/4]; ``"pixels"`` also works for
  pixel models.

`lumina_rt.components.write_components` writes the components.json of a checkpoint made of these parts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lumina_rt.builtin import AE_KIND, AE_WEIGHTS, TEXT_KIND, TEXT_VOCAB, TEXT_WEIGHTS
from lumina_rt.errors import CheckpointError, InputError, TextEncoderError
from lumina_rt.files import atomic_write, save_tensors

logger = logging.getLogger(__name__)


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


def concept_embedding(
    vocab: Sequence[str], concepts: dict[str, str], dim: int, seed: int = 0, own: float = 0.3
) -> torch.Tensor:
    """`fixed_embedding` rows, except that a paraphrase (a word `concepts` maps to another vocabulary word, e.g.
    "crimson" -> "red") gets mostly its concept's row: sqrt(1 - own^2) * row(concept) + own * row(word), rescaled to
    the concept row's norm. The v2 encoder's stand-in for what a pretrained text encoder knows: a paraphrase it was
    never trained on lands next to the word it means (cosine sqrt(1 - own^2), 0.95 by default)."""
    table = fixed_embedding(len(vocab), dim, seed)
    index = {w: i for i, w in enumerate(vocab)}
    out = table.clone()
    for word, concept in concepts.items():
        if word != concept and word in index and concept in index:
            base = table[index[concept]]
            mixed = (1 - own**2) ** 0.5 * base + own * table[index[word]]
            out[index[word]] = mixed * base.norm() / mixed.norm().clamp_min(1e-6)
    return out.contiguous()


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
    def create(cls, dim: int = 64, seed: int = 0, caption_set: str = "v1") -> TinyTextEncoder:
        """The encoder a run trains with: caption set "v1" (the shipped table), or "v2" (its larger vocabulary, and
        paraphrases placed next to the words they mean: `concept_embedding`)."""
        from lumina_rt.data.captions import DEFAULT_SOURCE, SYSTEM_PROMPTS, vocabulary, word_concepts

        vocab = vocabulary(caption_set)
        if caption_set == "v1":
            table = fixed_embedding(len(vocab), dim, seed)
        else:
            table = concept_embedding(vocab, word_concepts(), dim, seed)
        return cls(vocab, table, SYSTEM_PROMPTS[DEFAULT_SOURCE])

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
        atomic_write(directory / TEXT_VOCAB, "\n".join(self.vocab) + "\n")
        save_tensors({"embedding": self.embedding}, directory / TEXT_WEIGHTS)
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
    def fit(cls, x: torch.Tensor, channels: int = 12, factor: int = 4, whiten: bool = True) -> PCAAutoencoder:
        """PCA of `factor` x `factor` blocks of clips x. `whiten`: every component standardised (unit variance);
        else all divided by one scale (their RMS standard deviation), so the components keep their variance ratios
        and the flow's loss weighs them as pixels do."""
        blocks = _to_blocks(x, factor).double()
        mean = blocks.mean(0)
        _, _, vh = torch.linalg.svd(blocks - mean, full_matrices=False)
        basis = vh[:channels].T.contiguous()
        basis = basis * torch.where(basis.sum(0) < 0, -1.0, 1.0)  # deterministic signs
        z = (blocks - mean) @ basis
        std = z.std(0).clamp_min(1e-6)
        if not whiten:
            std = torch.full_like(std, float(std.pow(2).mean().sqrt()))
        return cls(mean, basis, z.mean(0), std, factor)

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
        save_tensors(self.state(), directory / AE_WEIGHTS)
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
