"""The built-in model: where it lives and what it is, with no lumina_rt imports (a leaf every stage may read).

This folder ships the model's files (config.json, model.safetensors, components.json, the tiny text encoder's
vocabulary and table, the PCA autoencoder) and, in `v2a/`, the built-in sound model. Its parts live elsewhere:
the text encoder and latent space in `lumina_rt.components.tiny`, the engines built on first use in
`lumina_rt.builtin.engines`, reference generation in `lumina_rt.builtin.reference`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# components.json kinds of the built-in model's text encoder and decoder, and the files they name.
TEXT_KIND = "lumina-tiny-text"
TEXT_WEIGHTS = "text_encoder.safetensors"
TEXT_VOCAB = "text_vocab.txt"
AE_KIND = "lumina-tiny-pca"
AE_WEIGHTS = "autoencoder.safetensors"
V2A_FOLDER = "v2a"

# Shapes the built-in model's engines serve, and the size `lumina-rt generate --builtin` makes without sizes.
BUILTIN_SHAPES: dict[str, Any] = dict(resolutions=((32, 32), (64, 64)), frames=(1, 8, 16))
BUILTIN_DEFAULT_SIZE = (8, 32, 32)  # frames, height, width: the size it was trained at (trained_size)
UNTRAINED_SIZE = (8, 32, 32)  # what `trained_size` says of a checkpoint without a train_config.json
BUILTIN_SCALE = 4  # upscale of its videos when saved (CLI --builtin, Runtime.builtin) ...
BUILTIN_UPSCALE = "bicubic"  # ... with this filter (lumina_rt.video.UPSCALE_FILTERS): smooth edges, no blocks

# Sampling recipes of the built-in model: CFG against the system-prompt-only caption with a mid-range motion score
# (1.4 px/frame, a motion-contrast negative like the released presets' conditioned negMotion: it pushes slow
# prompts slower and fast ones faster), strong while t is small (where the direction of motion is decided), then
# off (no negative branch), as the released presets switch guidance off late. Chosen on tuning seeds 1-3 and
# 6-14 (432 videos each); late CFG 3 gave the same direction but lower motion correlation, an unconditioned
# negative motion 0.007-0.013 lower motion correlation (docs/training.md).
BUILTIN_SINGLE: dict[str, Any] = dict(P="1x2", step=16, ts=2.0, cfg=[8.0, [0.3, 0.0]], motion=1.2, negMotion=1.4)
# Multi-scale: 2x2 patches (half the tokens) until t = 0.4, then 1x2, guidance 6 until t = 0.4. The released-style
# ["2x4", [0.1, "2x2"], [0.3, "1x2"]] scored 58 % direction against 74.5 % for 2x2 -> 1x2 on an earlier model: the
# 2x4 embedder's 2 x 2 token grid per frame pair is presumably too coarse to fix the direction early.
BUILTIN_MULTI: dict[str, Any] = {**BUILTIN_SINGLE, "P": ["2x2", [0.4, "1x2"]], "cfg": [6.0, [0.4, 0.0]]}


def builtin_presets() -> dict[str, dict[str, Any]]:
    """The built-in sampling presets; the first is the engines' default (multi-scale: better direction, cheaper)."""
    return {"multi_scale": dict(BUILTIN_MULTI), "single_scale": dict(BUILTIN_SINGLE)}


def trained_size(directory: str | Path) -> tuple[int, int, int]:
    """(frames, height, width) a checkpoint was trained for: its train_config.json's last stage, else 8 x 32 x 32."""
    import json

    path = Path(directory) / "train_config.json"
    stages = (json.loads(path.read_text()).get("stages") or []) if path.is_file() else []
    if not stages:
        return UNTRAINED_SIZE
    return int(stages[-1]["frames"]), int(stages[-1]["size"]), int(stages[-1]["size"])


def builtin_dir() -> Path:
    """Folder of the shipped built-in model (config.json, model.safetensors, components.json, ...)."""
    return Path(__file__).resolve().parent


def builtin_v2a_dir() -> Path:
    """Folder of the shipped V2A model (the `v2a` folder of the built-in model)."""
    return builtin_dir() / V2A_FOLDER


def builtin_v2a_source() -> Path | None:
    """The shipped sound model's folder (lumina_rt/builtin/v2a/), or None while it is not there."""
    folder = builtin_v2a_dir()
    return folder if (folder / "config.json").is_file() else None
