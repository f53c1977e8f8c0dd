"""The built-in model sampled with the reference torch model and sampler (no engines), and its sampling presets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lumina_rt.builtin import builtin_dir, builtin_presets, trained_size
from lumina_rt.components import read_components
from lumina_rt.errors import TextEncoderError
from lumina_rt.pipeline import Pipeline


def sample_presets(directory: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The checkpoint's sampling presets ("single_scale", "multi_scale"); the built-in model's by default."""
    comps = read_components(builtin_dir() if directory is None else directory)
    return comps.get("sampling") or builtin_presets()


@torch.no_grad()
def generate_reference(
    prompt: str | list[str],
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
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
    be one score per prompt (negative: unconditioned). Negative condition: the system prompt alone. Sizes default
    to what the checkpoint was trained at (`trained_size`: the built-in model's 8 x 32 x 32).
    """
    directory = builtin_dir() if directory is None else directory
    trained = trained_size(directory)
    frames, height, width = (trained[i] if v is None else v for i, v in enumerate((frames, height, width)))
    pipeline = Pipeline.from_checkpoint(directory)
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
