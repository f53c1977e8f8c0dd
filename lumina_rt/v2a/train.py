"""V2A trainer: rectified flow matching on audio latents, on the shared trainer core (`lumina-rt train-v2a`).

From `lumina_rt.training.core`, as the video trainer uses it: `TrainSettings` (the `train` section: seed, batch size,
lr schedule, AdamW, clipping, EMA, caption dropout, time sampling, logging and checkpoint cadence),
`flow_matching_inputs` (x_t = t x1 + (1 - t) x0, target x1 - x0, logit-normal times through the time shift),
`flow_matching_loss`, `drop_conditions` (caption dropout for CFG), the per-step generators, the optimizer step with
EMA, the atomic, resumable checkpoints and the step loop (`run_steps`: log, checkpoints).

V2A-specific (the `v2a` section): video dropout (the "no video" condition, for CFG against video + caption), the
clip lengths trained (every `long_every`-th step a batch of `long_frames`-frame clips at half the batch size), the
audio codec's fit, and the sampling defaults written into the exported model. Every random draw of step k comes from
generators seeded by (seed, k), and clips are a pure function of (data seed, step, index), so an interrupted and
resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lumina_rt.config import strict_fields
from lumina_rt.data.sound import SoundDataset
from lumina_rt.errors import ConfigError
from lumina_rt.files import atomic_write, save_tensors
from lumina_rt.training.core import (
    StepResult,
    TrainSettings,
    adamw,
    drop_conditions,
    flow_matching_inputs,
    flow_matching_loss,
    new_ema,
    optimizer_step,
    resume_from_checkpoint,
    run_steps,
    set_learning_rate,
    set_threads,
    step_generator,
)
from lumina_rt.v2a.codec import AudioCodec, AudioSpec, log_mel
from lumina_rt.v2a.model import V2A_CONFIG, V2A_WEIGHTS, V2AConfig, V2AModel
from lumina_rt.v2a.pipeline import V2ASampling

logger = logging.getLogger(__name__)

RANDOM_STREAM = 50  # this trainer's stream of per-step random draws (core.step_generator; the video trainer's is 1)


@dataclass
class V2ASettings:
    """The `v2a` section."""

    iters: int = 3000
    frames: int = 8  # clip length of most steps
    long_frames: int = 16  # every `long_every`-th step: clips of this length, half the batch
    long_every: int = 4  # 0: never
    shift: float = 2.0  # training time shift (> 1: more steps near noise, where pitch and timing are decided)
    video_drop: float = 0.1  # P(visual features -> "no video")
    caption_with_video: bool = False  # drop the caption too where the video is dropped (no caption-only condition)
    data_seed: int = 0
    codec_channels: int = 6
    codec_block: list[int] = field(default_factory=lambda: [2, 4])
    codec_fit_clips: int = 512
    serve_frames: list[int] = field(default_factory=lambda: [8, 16])  # [min, max] video frames served
    sampling: dict[str, Any] = field(default_factory=lambda: dict(steps=16, shift=2.0, guidance=2.0))


@dataclass
class V2ATrainConfig:
    """Sections: model (V2AConfig keywords; "size" picks a preset), audio (AudioSpec), train, v2a, output, export."""

    model: V2AConfig
    audio: AudioSpec
    train: TrainSettings
    v2a: V2ASettings
    output: str | None = None
    export: str | None = None

    SECTIONS = ("model", "audio", "train", "v2a", "output", "export", "comment")

    @classmethod
    def load(cls, source: str | Path | dict[str, Any] | V2ATrainConfig) -> V2ATrainConfig:
        if isinstance(source, V2ATrainConfig):
            return source
        if isinstance(source, dict):
            return cls.from_dict(source)
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"V2A training config {str(path)!r} does not exist")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{str(path)!r} is not valid JSON: {exc}") from None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> V2ATrainConfig:
        unknown = sorted(set(raw) - set(cls.SECTIONS))
        if unknown:
            raise ConfigError(f"unknown V2A training config sections {unknown}; accepted: {list(cls.SECTIONS)}")
        sections = {name: strict_fields(kind, raw.get(name, {}), name)
                    for name, kind in (("train", TrainSettings), ("v2a", V2ASettings))}  # fmt: skip
        model_raw = dict(raw.get("model", {}))
        size = model_raw.pop("size", "builtin")
        model = V2AConfig.from_name(size, **model_raw)
        audio = AudioSpec.from_dict(raw.get("audio", {}))
        v = sections["v2a"]
        for key in ("iters", "frames"):
            value = getattr(v, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"v2a: {key} must be a positive integer, got {value!r}")
        if not 0 <= v.video_drop < 1:
            raise ConfigError(f"v2a: video_drop must be in [0, 1), got {v.video_drop!r}")
        if model.latent_channels != v.codec_channels:
            raise ConfigError(
                f"model latent_channels={model.latent_channels} but v2a codec_channels={v.codec_channels}"
            )
        bt, bm = v.codec_block
        if audio.n_mels // bm != model.latent_bands or audio.mel_frames_per_video_frame // bt != (
            model.latent_frames_per_video_frame
        ):
            raise ConfigError(
                f"codec block {v.codec_block} on {audio.n_mels} mels / {audio.mel_frames_per_video_frame} mel frames "
                f"per video frame does not give the model's latent grid ({model.latent_bands} bands, "
                f"{model.latent_frames_per_video_frame} frames per video frame)"
            )
        return cls(model, audio, sections["train"], v, raw.get("output"), raw.get("export"))

    def to_dict(self) -> dict[str, Any]:
        return dict(model=self.model.to_kwargs(), audio=self.audio.to_dict(), train=asdict(self.train),
                    v2a=asdict(self.v2a), output=self.output, export=self.export)  # fmt: skip


def fit_codec(cfg: V2ATrainConfig, dataset: SoundDataset) -> AudioCodec:
    """PCA audio codec fitted on `codec_fit_clips` training-pair clips (their own seed stream)."""
    v = cfg.v2a
    waves = torch.stack([c.wave for c in dataset.clips("fit", 0, int(v.codec_fit_clips), v.frames)])
    return AudioCodec.fit(log_mel(waves, cfg.audio), cfg.audio, int(v.codec_channels), tuple(v.codec_block))


@dataclass
class V2ATrainRun:
    cfg: V2ATrainConfig
    out: Path
    model: V2AModel
    codec: AudioCodec
    encoder: Any  # TinyTextEncoder
    dataset: SoundDataset
    opt: torch.optim.Optimizer
    ema: dict[str, torch.Tensor] | None
    step: int = 0
    elapsed_before: float = 0.0

    @property
    def log_path(self) -> Path:
        return self.out / "train_log.jsonl"


def setup(cfg: V2ATrainConfig, out: Path) -> V2ATrainRun:
    """Seed, then build the model, text encoder, data, audio codec and optimizer."""
    from lumina_rt.components.tiny import TinyTextEncoder

    tc = cfg.train
    torch.manual_seed(int(tc.seed))
    model = V2AModel(cfg.model).train()
    encoder = TinyTextEncoder.create(dim=cfg.model.cap_feat_dim, seed=int(tc.text_seed))
    dataset = SoundDataset(cfg.audio, seed=int(cfg.v2a.data_seed))
    codec = fit_codec(cfg, dataset)
    opt = adamw(model, tc)
    return V2ATrainRun(cfg, out, model, codec, encoder, dataset, opt, new_ema(model, tc.ema))


def batch_shape(v: V2ASettings, batch_size: int, step: int) -> tuple[int, int]:
    """(clips, frames) of step `step`: long clips at half the batch every `long_every`-th step."""
    if v.long_every and step % v.long_every == v.long_every - 1:
        return max(1, batch_size // 2), v.long_frames
    return batch_size, v.frames


def train_step(run: V2ATrainRun) -> tuple[float, float, float]:
    """One iteration at run.step; returns (loss, gradient norm before clipping, learning rate)."""
    cfg, tc, v, step = run.cfg, run.cfg.train, run.cfg.v2a, run.step
    lr = set_learning_rate(run.opt, tc, step, v.iters)
    gen = step_generator(tc.seed, step, RANDOM_STREAM)
    n, frames = batch_shape(v, int(tc.batch_size), step)
    clips = run.dataset.clips("train", step * 1000, n, frames)
    x1 = run.codec.encode(log_mel(torch.stack([c.wave for c in clips]), cfg.audio))
    video = torch.stack([c.frames for c in clips])
    caps, _ = drop_conditions([c.caption for c in clips], torch.zeros(n), tc.caption_drop, 0.0, gen)
    keep = (torch.rand(n, generator=gen) >= v.video_drop).float()
    if v.caption_with_video:
        caps = [cap if k else "" for cap, k in zip(caps, keep.tolist())]
    feats, mask = run.encoder.encode(caps)
    xt, t, target = flow_matching_inputs(x1, v.shift, tc.time_sampling, gen)
    run.opt.zero_grad(set_to_none=True)
    loss = flow_matching_loss(run.model.velocity(xt, t, video, feats, mask, keep), target)
    loss.backward()
    return float(loss.item()), optimizer_step(run, tc), lr


def export_v2a(run: V2ATrainRun, export: str | Path) -> Path:
    """Write the trained model (EMA weights when kept) as a V2A checkpoint folder `V2APipeline.from_dir` loads."""
    export = Path(export)
    export.mkdir(parents=True, exist_ok=True)
    state = run.ema if run.ema is not None else run.model.state_dict()
    save_tensors(state, export / V2A_WEIGHTS)
    run.codec.save(export)
    v = run.cfg.v2a
    config = dict(
        model=run.cfg.model.to_kwargs(),
        audio=run.cfg.audio.to_dict(),
        codec=dict(kind="pca-logmel", channels=run.codec.channels, block=list(run.codec.block)),
        text_encoder=run.encoder.save(export),
        sampling=asdict(V2ASampling(**v.sampling)),
        frames=list(v.serve_frames),
    )
    atomic_write(export / V2A_CONFIG, json.dumps(config, indent=2) + "\n")
    if run.log_path.is_file():
        shutil.copy2(run.log_path, export / "train_log.jsonl")
    (export / "train_config.json").write_text(json.dumps(run.cfg.to_dict(), indent=1) + "\n")
    logger.info("exported the V2A model to %s", export)
    return export


def train_v2a(
    config: str | Path | dict[str, Any] | V2ATrainConfig,
    out_dir: str | Path | None = None,
    resume_run: bool = True,
    stop_after: int | None = None,
    export_dir: str | Path | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) a V2A model; returns {"out", "step", "export" (dir or None), "log", "seconds"}.

    `stop_after`: stop (after checkpointing) once this many steps are done, as an interruption would.
    """
    cfg = V2ATrainConfig.load(config)
    tc, v = cfg.train, cfg.v2a
    out = Path(out_dir or cfg.output or "runs/v2a")
    out.mkdir(parents=True, exist_ok=True)
    set_threads(tc, threads)
    run = setup(cfg, out)
    resume_from_checkpoint(run, resume_run)
    (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    end = v.iters if stop_after is None else min(v.iters, int(stop_after))

    def step() -> StepResult:
        loss, grad_norm, lr = train_step(run)
        return StepResult({"audio": loss}, grad_norm, lr)

    seconds = run_steps(run, step, tc, v.iters, end, desc="train-v2a", progress=progress, task_losses=False)
    export = export_dir if export_dir is not None else cfg.export
    done = run.step >= v.iters and export
    return dict(out=out, step=run.step, export=export_v2a(run, export) if done else None, log=run.log_path,
                seconds=seconds)  # fmt: skip
