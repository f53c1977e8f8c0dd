"""V2A trainer: rectified flow matching on audio latents, with the video trainer's machinery (`lumina-rt train-v2a`).

Imported from `lumina_rt.training.video`, not copied:
`TrainSettings` (the `train` section: seed, batch size, lr schedule,
AdamW, clipping, EMA, caption dropout, time sampling, logging and checkpoint cadence), `flow_matching_inputs`
(x_t = t x1 + (1 - t) x0, target x1 - x0, logit-normal times through the time shift), `flow_matching_loss`,
`drop_conditions` (caption dropout for CFG), `learning_rate`, and the atomic, resumable checkpoints
(`save_checkpoint`, `latest_checkpoint`, `prune_checkpoints`).

V2A-specific (the `v2a` section): video dropout (the "no video" condition, for CFG against video + caption), the
clip lengths trained (every `long_every`-th step a batch of `long_frames`-frame clips at half the batch size), the
audio codec's fit, and the sampling defaults written into the exported model. Every random draw of step k comes from
generators seeded by (seed, k), and clips are a pure function of (data seed, step, index), so an interrupted and
resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from lumina_rt.checkpoint import NATIVE_WEIGHTS
from lumina_rt.data.sound import SoundDataset
from lumina_rt.errors import ConfigError
from lumina_rt.files import atomic_write
from lumina_rt.training.video import (
    TrainSettings,
    drop_conditions,
    flow_matching_inputs,
    flow_matching_loss,
    latest_checkpoint,
    learning_rate,
    prune_checkpoints,
    save_checkpoint,
)
from lumina_rt.v2a.codec import AudioCodec, AudioSpec, log_mel
from lumina_rt.v2a.model import V2A_CONFIG, V2A_WEIGHTS, V2AConfig, V2AModel
from lumina_rt.v2a.pipeline import V2ASampling

logger = logging.getLogger(__name__)


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
        sections = {}
        for name, kind in (("train", TrainSettings), ("v2a", V2ASettings)):
            section = raw.get(name, {})
            if not isinstance(section, dict):
                raise ConfigError(f"{name} must be an object of settings, got {section!r}")
            accepted = {f.name for f in dataclasses.fields(kind)}
            bad = sorted(set(section) - accepted)
            if bad:
                raise ConfigError(f"unknown {name} keys {bad}; accepted: {sorted(accepted)}")
            sections[name] = kind(**copy.deepcopy(section))
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


def step_generator(seed: int, step: int, salt: int) -> torch.Generator:
    """The generator of one step's random draws (noise, times, dropouts)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) * 97 + 50 + salt)


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
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if tc.ema > 0 else None
    return V2ATrainRun(cfg, out, model, codec, encoder, dataset, opt, ema)


def resume(run: V2ATrainRun) -> None:
    """Continue from the latest checkpoint under run.out (weights, optimizer, EMA, step, log) if there is one."""
    latest = latest_checkpoint(run.out)
    if latest is None:
        if run.log_path.exists():
            run.log_path.unlink()
        return
    state = json.loads((latest / "trainer_state.json").read_text())
    run.step = int(state["step"])
    run.elapsed_before = float(state.get("elapsed_s", 0.0))
    run.model.load_state_dict(load_file(str(latest / NATIVE_WEIGHTS)), strict=True)
    run.opt.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True))
    if run.ema is not None:
        run.ema = load_file(str(latest / "ema.safetensors"))
    if run.log_path.is_file():
        keep = [ln for ln in run.log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= run.step]
        run.log_path.write_text("".join(ln + "\n" for ln in keep))
    logger.info("resumed from %s at step %d", latest, run.step)


def batch_shape(v: V2ASettings, batch_size: int, step: int) -> tuple[int, int]:
    """(clips, frames) of step `step`: long clips at half the batch every `long_every`-th step."""
    if v.long_every and step % v.long_every == v.long_every - 1:
        return max(1, batch_size // 2), v.long_frames
    return batch_size, v.frames


def train_step(run: V2ATrainRun) -> tuple[float, float, float]:
    """One iteration at run.step; returns (loss, gradient norm before clipping, learning rate)."""
    cfg, tc, v, step = run.cfg, run.cfg.train, run.cfg.v2a, run.step
    lr = learning_rate(tc, step, v.iters)
    for group in run.opt.param_groups:
        group["lr"] = lr
    gen = step_generator(tc.seed, step, 0)
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
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip))
    run.opt.step()
    if run.ema is not None:
        decay = min(tc.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, val in run.model.state_dict().items():
                run.ema[k].mul_(decay).add_(val.detach(), alpha=1 - decay)
    return float(loss.item()), grad_norm, lr


def export_v2a(run: V2ATrainRun, export: str | Path) -> Path:
    """Write the trained model (EMA weights when kept) as a V2A checkpoint folder `V2APipeline.from_dir` loads."""
    export = Path(export)
    export.mkdir(parents=True, exist_ok=True)
    state = run.ema if run.ema is not None else run.model.state_dict()
    save_file({k: val.detach().contiguous().cpu() for k, val in state.items()}, str(export / V2A_WEIGHTS))
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
    if threads or tc.threads:
        torch.set_num_threads(int(threads or tc.threads))
    run = setup(cfg, out)
    if resume_run:
        resume(run)
    elif run.log_path.exists():
        run.log_path.unlink()
    (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    end = v.iters if stop_after is None else min(v.iters, int(stop_after))
    bar = tqdm(total=v.iters, initial=run.step, desc="train-v2a", unit="it", disable=not progress, dynamic_ncols=True)
    t_start = time.time()
    running, count = 0.0, 0
    while run.step < end:
        loss, grad_norm, lr = train_step(run)
        run.step += 1
        running, count = running + loss, count + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        elapsed = round(run.elapsed_before + time.time() - t_start, 1)
        if run.step % tc.log_every == 0 or run.step == end:
            rec = dict(step=run.step, lr=lr, grad_norm=round(grad_norm, 4), loss=round(running / count, 5),
                       elapsed_s=elapsed)  # fmt: skip
            with open(run.log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            running, count = 0.0, 0
        if run.step % tc.ckpt_every == 0 or run.step == end:
            save_checkpoint(out, run.step, run.model, run.opt, run.ema, {"elapsed_s": elapsed})
            prune_checkpoints(out, tc.keep_checkpoints)
    bar.close()
    export = export_dir if export_dir is not None else cfg.export
    done = run.step >= v.iters and export
    return dict(out=out, step=run.step, export=export_v2a(run, export) if done else None, log=run.log_path,
                seconds=round(run.elapsed_before + time.time() - t_start, 1))  # fmt: skip
