"""A small V2A checkpoint with random weights, in the layout `V2APipeline.from_dir` reads (tests only).

Every weight is perturbed away from its (often zero) initial value, so the velocity is far from zero and an engine
that computed nothing would fail the comparisons.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file


def make_v2a_checkpoint(out: Path, seed: int = 0, frames: tuple[int, int] = (8, 16)) -> Path:
    from lumina_rt.components.tiny import TinyTextEncoder
    from lumina_rt.v2a.codec import AudioCodec, AudioSpec, log_mel
    from lumina_rt.v2a.model import V2AConfig, V2AModel

    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    spec = AudioSpec()
    cfg = V2AConfig.from_name("tiny")
    block = (spec.mel_frames_per_video_frame // cfg.latent_frames_per_video_frame, spec.n_mels // cfg.latent_bands)
    t = torch.arange(spec.sample_rate) / spec.sample_rate
    sounds = torch.stack([torch.sin(2 * torch.pi * f * t) for f in (220, 440, 880, 1760)]) * 0.3
    sounds = sounds + 0.05 * torch.randn(sounds.shape, generator=g)
    codec = AudioCodec.fit(log_mel(sounds, spec), spec, cfg.latent_channels, block)
    codec.save(out)
    text = TinyTextEncoder.create(dim=cfg.cap_feat_dim).save(out)
    model = V2AModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    config = {"name": "tiny-random", "model": cfg.to_kwargs(), "audio": spec.to_dict(), "text_encoder": text,
              "codec": {"kind": "pca-logmel", "channels": codec.channels, "block": list(codec.block)},
              "sampling": {"steps": 4}, "frames": list(frames)}  # fmt: skip
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


_MADE: dict[str, Path] = {}


def tiny_v2a_dir() -> Path:
    """One small random V2A checkpoint per test session (removed at exit), shared by the test modules."""
    if "tiny" not in _MADE:
        root = Path(tempfile.mkdtemp(prefix="lumina_rt_v2a_tests_"))
        atexit.register(shutil.rmtree, root, True)
        _MADE["tiny"] = make_v2a_checkpoint(root / "tiny")
    return _MADE["tiny"]


def require_builtin_v2a() -> Path:
    """The shipped V2A model's folder; a failure naming the missing folder when it is not there (it ships with the
    package, so its absence is a broken install, not a missing optional piece)."""
    from lumina_rt.builtin import builtin_dir, builtin_v2a_source

    folder = builtin_v2a_source()
    if folder is None:
        pytest.fail(f"the built-in V2A model is missing: no {builtin_dir() / 'v2a' / 'config.json'}")
    return folder
