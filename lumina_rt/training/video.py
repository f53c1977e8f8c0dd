"""Reference trainer: flow matching with the Lumina-Video recipe (`lumina-rt train`: lumina_rt/cli/train.py).

Recipe (see docs/training.md):

- loss: flow-matching velocity MSE, x_t = t x1 + (1 - t) x0 (x0 noise, x1 data), target v = x1 - x0, plus the
  released optional cosine term ``vd_weight * (1 - cos(pred, target))`` over the channel (feature) axis;
- Algorithm 1: every patch size in every iteration, gradients accumulated over the patch sizes, each patch
  size with its own time shift (larger patches, larger shift);
- time sampling: logit-normal base t = sigmoid(n), n ~ N(0, 1) (or uniform), then the sampler's time shift
  t' = t / (t + s - s t);
- motion-score conditioning dropped with probability 0.4 (score -1 = unconditioned);
- caption dropout that keeps the data source's system prompt (one system prompt per source);
- image-video joint training: images (single frames) at the finest patch size only, shift 1;
- progressive stages from the config file (resolution / frame rate rising by stage);
- AdamW, gradient clipping, optional EMA, linear warm-up; atomic, resumable checkpoints (native layout);
  a JSON-lines log and a progress bar.

What the V2A trainer shares (the `train` section, flow matching, dropout, per-step generators, optimizer step, EMA,
checkpoints, resume and the step loop) is `lumina_rt.training.core`; this module is the video recipe. Every random
draw of step k comes from generators seeded by (seed, k), so an interrupted and resumed run ends with exactly the
weights of an uninterrupted one.

Layout: `TrainConfig` (the config, validated in one place) -> `setup` (model, encoder, data, optimizer, latent)
-> `resume_from_latest` -> `train_step` per iteration -> `export_model`; `train` drives them through
`core.run_steps` (log, checkpoints).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lumina_rt.checkpoint import save_native
from lumina_rt.config import ModelConfig, strict_fields
from lumina_rt.errors import ConfigError
from lumina_rt.model import MultiScaleNextDiT
from lumina_rt.sampling import pad_caption_tokens
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

logger = logging.getLogger(__name__)

CAPTION_BUCKET = 8  # compiled stages pad caption tokens to a multiple of this (eager stages: 1, no padding)
RANDOM_STREAM = 1  # this trainer's stream of per-step random draws (core.step_generator)


# ------------------------------------------------------------------------------------------------
# Config: one dataclass per section (`train`: core.TrainSettings), validated in `TrainConfig.from_dict`
# ------------------------------------------------------------------------------------------------


@dataclass
class DataSettings:
    """The `data` section: the synthetic multi-source dataset."""

    sources: list[str] = field(default_factory=lambda: ["toon", "grainy"])
    hold_out: bool = True
    seed: int = 0
    caption_set: str = "v1"  # "v2": v2 clips and captions (lumina_rt.data.captions), the v2 text vocabulary


@dataclass
class LatentSettings:
    """The `latent` section: "pixels" (in_channels 3) or "pca" (a linear autoencoder fitted on `fit_clips` clips at
    the last stage's size: `channels` components of `factor` x `factor` pixel blocks, each standardised with
    `whiten`, else all divided by one scale so that their variances keep their ratios: `PCAAutoencoder.fit`)."""

    kind: str = "pixels"
    channels: int = 12
    factor: int = 4
    fit_clips: int = 512
    whiten: bool = True


@dataclass
class TrainStage:
    """One entry of `stages`: `iters` iterations at `size` x `size` pixels, `frames` frames every `frame_stride`."""

    iters: int
    size: int
    frames: int
    frame_stride: int = 1
    name: str = ""  # default: "stage<i>"
    compile: bool | None = None  # default: the train section's
    shifts: dict[str, float] = field(default_factory=dict)  # this stage's time shifts (combo or "image") over train's
    lr: float | None = None  # a constant learning rate for this stage instead of the train section's schedule


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _choice(where: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{where} must be {' or '.join(repr(a) for a in allowed)}, got {value!r}")


@dataclass
class TrainConfig:
    """A training config (JSON, or TOML by extension): sections model, data, latent, train, stages, output, export."""

    model: ModelConfig
    train: TrainSettings
    data: DataSettings
    latent: LatentSettings
    stages: list[TrainStage]
    output: str | None = None
    export: str | None = None

    SECTIONS = ("model", "data", "latent", "train", "stages", "output", "export", "comment")

    @classmethod
    def load(cls, source: str | Path | dict[str, Any] | TrainConfig) -> TrainConfig:
        """A TrainConfig as is, a dict (`from_dict`) or a file path (`from_file`)."""
        if isinstance(source, TrainConfig):
            return source
        return cls.from_dict(source) if isinstance(source, dict) else cls.from_file(source)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config {str(path)!r} does not exist")
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10: tomli, the same parser (a dependency there, pyproject.toml)
                import tomli as tomllib

            raw = tomllib.loads(path.read_text())
        else:
            try:
                raw = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{str(path)!r} is not valid JSON: {exc}") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """Fill in defaults and check every setting; raises ConfigError naming the bad key or value."""
        unknown = sorted(set(raw) - set(cls.SECTIONS))
        if unknown:
            raise ConfigError(f"unknown training config sections {unknown}")
        train = strict_fields(TrainSettings, raw.get("train", {}), "train")
        data = strict_fields(DataSettings, raw.get("data", {}), "data")
        _choice("data caption_set", data.caption_set, ("v1", "v2"))
        latent = strict_fields(LatentSettings, raw.get("latent", {}), "latent")
        _choice("latent kind", latent.kind, ("pixels", "pca"))
        _choice("autocast", train.autocast, ("none", "bf16"))
        _choice("time_sampling", train.time_sampling, ("logit-normal", "uniform"))
        if not isinstance(train.compile, bool):
            raise ConfigError(f"train: compile must be true or false, got {train.compile!r}")
        stages = []
        for i, entry in enumerate(raw.get("stages") or [dict(iters=100, size=32, frames=8, frame_stride=1)]):
            st = strict_fields(TrainStage, entry, f"stage {i}")
            for key in ("iters", "size", "frames", "frame_stride"):
                value = getattr(st, key)
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ConfigError(f"stage {i}: {key} must be a positive integer, got {value!r}")
            st.name = st.name or f"stage{i}"
            st.compile = train.compile if st.compile is None else st.compile
            if not isinstance(st.compile, bool):
                raise ConfigError(f"stage {i}: compile must be true or false, got {st.compile!r}")
            if st.lr is not None and not _positive(st.lr):
                raise ConfigError(f"stage {i}: lr must be a positive number, got {st.lr!r}")
            stages.append(st)
        model = ModelConfig.from_kwargs(raw.get("model", {}), name="builtin")
        allowed = {"image", *model.patch_combos}
        for i, st in enumerate(stages):
            if not isinstance(st.shifts, dict) or not all(k in allowed and _positive(v) for k, v in st.shifts.items()):
                raise ConfigError(f"stage {i}: shifts must map {sorted(allowed)} to positive values, got {st.shifts!r}")
        want = 3 if latent.kind == "pixels" else int(latent.channels)
        if model.in_channels != want:
            raise ConfigError(f"model in_channels={model.in_channels} but the {latent.kind} latent has {want} channels")
        return cls(model, train, data, latent, stages, raw.get("output"), raw.get("export"))

    def to_dict(self) -> dict[str, Any]:
        """The filled-in config as plain JSON values (what a run records in train_config.json)."""
        return dict(
            model=self.model.to_kwargs(), data=asdict(self.data), latent=asdict(self.latent), train=asdict(self.train),
            stages=[asdict(s) for s in self.stages], output=self.output, export=self.export,
        )  # fmt: skip

    @property
    def total_iters(self) -> int:
        return sum(int(s.iters) for s in self.stages)

    @property
    def schedule_end(self) -> int:
        """Where the train section's learning-rate schedule ends: the end of its last stage without an `lr` of its
        own (stages with one, e.g. a final fine-tuning stage, leave the schedule of the stages before them as is)."""
        acc = end = 0
        for st in self.stages:
            acc += int(st.iters)
            if st.lr is None:
                end = acc
        return end or self.total_iters

    def stage_at(self, step: int) -> tuple[int, TrainStage]:
        """(index, stage) that training step `step` belongs to (the last stage after the end)."""
        acc = 0
        for i, st in enumerate(self.stages):
            acc += int(st.iters)
            if step < acc:
                return i, st
        return len(self.stages) - 1, self.stages[-1]


def task_shifts(model_cfg: ModelConfig, shifts: dict[str, float]) -> dict[str, float]:
    """Training time shift per task ("image" and every video combo): larger patches, larger shift.

    Defaults follow the released recipe: images 1, the finest video patch 2, and the shift doubling with each
    coarser patch size (1x2 -> 2, 2x2 -> 4, 2x4 -> 8 in the released model); `shifts` overrides any of them.
    """
    by_size = sorted(model_cfg.patch_combos, key=_patch_volume)
    out = {"image": float(shifts.get("image", 1.0))}
    for rank, c in enumerate(by_size):
        out[c] = float(shifts.get(c, 2.0 * 2**rank))
    return out


def _patch_volume(combo: str) -> int:
    pf, p = (int(v) for v in combo.split("x"))
    return pf * p * p


def finest_combo(model_cfg: ModelConfig) -> str:
    return min(model_cfg.patch_combos, key=_patch_volume)


# ------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------


def pad_captions(feats: torch.Tensor, mask: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad caption features [B, L, D] and mask [B, L] with masked tokens to a multiple of `multiple` tokens.

    Masked tokens change no output (attention gives them zero weight, pooling skips them); a compiled model
    then sees a few caption lengths instead of one per batch, so it is not recompiled every step.
    """
    return pad_caption_tokens(feats, mask, -(-feats.shape[1] // multiple) * multiple)


@dataclass
class TrainRun:
    """Everything a run trains with (built by `setup`) and its progress (`step`, set by `resume_from_latest`)."""

    cfg: TrainConfig
    out: Path
    model: MultiScaleNextDiT
    encoder: Any  # TinyTextEncoder
    dataset: Any  # SyntheticDataset
    opt: torch.optim.Optimizer
    ema: dict[str, torch.Tensor] | None
    autoencoder: Any  # PCAAutoencoder | None
    shifts: dict[str, float]
    step: int = 0
    elapsed_before: float = 0.0  # training seconds of earlier segments (a resumed run keeps counting)

    @property
    def log_path(self) -> Path:
        return self.out / "train_log.jsonl"

    def to_latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(x) if self.autoencoder is not None else x

    def combos(self) -> list[str]:
        """Patch combos trained every iteration (Algorithm 1: all; `multiscale: false`: the finest only)."""
        mcfg = self.cfg.model
        return list(mcfg.patch_combos) if self.cfg.train.multiscale else [finest_combo(mcfg)]


def setup(cfg: TrainConfig, out: Path, resume: bool) -> TrainRun:
    """Seed, then build the model, text encoder, data, optimizer, EMA and (PCA latent) autoencoder, in that order."""
    from lumina_rt.builtin import AE_WEIGHTS
    from lumina_rt.components.tiny import PCAAutoencoder, TinyTextEncoder
    from lumina_rt.data import SyntheticDataset

    tc, mcfg = cfg.train, cfg.model
    torch.manual_seed(int(tc.seed))
    model = MultiScaleNextDiT(mcfg).train()
    encoder = TinyTextEncoder.create(dim=mcfg.cap_feat_dim, seed=int(tc.text_seed), caption_set=cfg.data.caption_set)
    dataset = SyntheticDataset(
        seed=int(cfg.data.seed), sources=tuple(cfg.data.sources), hold_out=bool(cfg.data.hold_out),
        caption_set=cfg.data.caption_set,
    )  # fmt: skip
    # fused: one kernel over all parameters (1.2 vs 4.5 ms per step for the built-in model, same update math)
    opt = adamw(model, tc, fused=True)
    ema = new_ema(model, tc.ema)
    autoencoder = None
    if cfg.latent.kind == "pca":
        if resume and (out / AE_WEIGHTS).is_file():
            autoencoder = PCAAutoencoder.load(out)
        else:
            last = cfg.stages[-1]
            n_fit = int(cfg.latent.fit_clips)
            clips = torch.cat([dataset.video_batch(10**9 + i, 32, last.size, last.frames).x
                               for i in range((n_fit + 31) // 32)])[:n_fit]  # fmt: skip
            autoencoder = PCAAutoencoder.fit(
                clips, int(cfg.latent.channels), int(cfg.latent.factor), whiten=bool(cfg.latent.whiten)
            )
            autoencoder.save(out)
    return TrainRun(cfg, out, model, encoder, dataset, opt, ema, autoencoder, task_shifts(mcfg, tc.shifts))


def resume_from_latest(run: TrainRun, enabled: bool = True) -> None:
    """Continue from the run's latest checkpoint (`core.resume_from_checkpoint`: weights, optimizer, EMA, step, log up
    to that step), or start a fresh log; then record the filled-in config (train_config.json) and the autoencoder."""
    from lumina_rt.builtin import AE_WEIGHTS

    out = run.out
    resume_from_checkpoint(run, enabled)
    (out / "train_config.json").write_text(
        json.dumps({**run.cfg.to_dict(), "shifts_used": run.shifts}, indent=1, default=str)
    )
    if run.autoencoder is not None and not (out / AE_WEIGHTS).is_file():
        run.autoencoder.save(out)


def train_step(run: TrainRun, forward, bucket: int, autocast) -> tuple[dict[str, float], float, float]:
    """One iteration at `run.step`: every patch size (and the image task), gradients accumulated, one update.

    Returns (loss per task, gradient norm before clipping, learning rate); does not advance `run.step`.
    """
    from lumina_rt.data import SYSTEM_PROMPTS

    cfg, tc, mcfg, step = run.cfg, run.cfg.train, run.cfg.model, run.step
    combos = run.combos()
    n_tasks = len(combos) + (1 if tc.image_batch_size > 0 else 0)
    _, stage = cfg.stage_at(step)
    lr = set_learning_rate(run.opt, tc, step, cfg.schedule_end, fixed=stage.lr)
    shifts = {**run.shifts, **{k: float(v) for k, v in stage.shifts.items()}}
    gen = step_generator(int(tc.seed), step, RANDOM_STREAM)
    batch = run.dataset.video_batch(step, tc.batch_size, stage.size, stage.frames, stage.frame_stride)
    caps, motion = drop_conditions(batch.captions, batch.motion, tc.caption_drop, tc.motion_drop, gen)
    feats, mask = pad_captions(*run.encoder.encode(caps, [SYSTEM_PROMPTS[s] for s in batch.sources]), bucket)
    x_video = run.to_latent(batch.x)
    run.opt.zero_grad(set_to_none=True)
    losses = {}
    for combo in combos:  # Algorithm 1: every patch size, gradients accumulated
        pf, p = mcfg.check_combo(combo)
        xt, t, target = flow_matching_inputs(x_video, shifts[combo], tc.time_sampling, gen)
        with autocast:
            pred = forward(xt, t, feats, mask, motion, p, pf)
        loss = flow_matching_loss(pred, target, tc.vd_weight)
        (loss / n_tasks).backward()
        losses[combo] = loss.item()
    if tc.image_batch_size > 0:  # joint image training, finest patch only
        ib = run.dataset.image_batch(step, tc.image_batch_size, stage.size)
        icaps, _ = drop_conditions(ib.captions, ib.motion, tc.caption_drop, 0.0, gen)
        ifeats, imask = pad_captions(*run.encoder.encode(icaps, [SYSTEM_PROMPTS[s] for s in ib.sources]), bucket)
        pf, p = mcfg.check_combo(finest_combo(mcfg))
        xt, t, target = flow_matching_inputs(run.to_latent(ib.x), shifts["image"], tc.time_sampling, gen)
        with autocast:
            pred = forward(xt, t, ifeats, imask, ib.motion, p, pf)
        loss = flow_matching_loss(pred, target, tc.vd_weight)
        (loss / n_tasks).backward()
        losses["image"] = loss.item()
    return losses, optimizer_step(run, tc), lr


def export_model(run: TrainRun, export: str | Path) -> Path:
    """Write the final model (EMA weights when kept) with its components, log and config to `export`."""
    from lumina_rt.components import write_components

    final_sd = run.ema if run.ema is not None else run.model.state_dict()
    export = Path(export)
    save_native(export, run.cfg.model, final_sd)
    write_components(export, run.encoder, run.autoencoder)
    shutil.copy2(run.log_path, export / "train_log.jsonl")
    shutil.copy2(run.out / "train_config.json", export / "train_config.json")
    logger.info("exported %s weights to %s", "EMA" if run.ema is not None else "final", export)
    return export


def _compiled_forward(run: TrainRun):
    """torch.compile of the model when any stage compiles, else None.

    torch.compile fuses the many small element-wise ops (norms, modulation, RoPE, casts) that dominate a small
    model's CPU step; one graph per (patch size, stage shape, caption bucket), compiled on first use.
    """
    if not any(st.compile for st in run.cfg.stages):
        return None
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(run.model, dynamic=False)


def train(
    config: str | Path | dict[str, Any] | TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    export_dir: str | Path | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) from a config; returns {"out": dir, "step": n, "export": dir|None, "log": path}.

    `stop_after`: stop (after checkpointing) once this many total steps are done, as an interruption would.
    `threads`: override the config's torch thread count (on a shared machine 1 thread can be faster).
    """
    cfg = TrainConfig.load(config)
    tc = cfg.train
    out = Path(out_dir or cfg.output or "runs/train")
    out.mkdir(parents=True, exist_ok=True)
    set_threads(tc, threads)
    run = setup(cfg, out, resume)
    resume_from_latest(run, resume)
    total = cfg.total_iters
    end = total if stop_after is None else min(total, int(stop_after))
    # bf16 mixed precision: the linear layers run in bf16 (~1.5x faster steps on a CPU with AVX-512 BF16),
    # weights, optimizer state, attention (see model._attention) and losses stay float32.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.autocast == "bf16")
    compiled = _compiled_forward(run)

    def step() -> StepResult:
        stage_i, stage = cfg.stage_at(run.step)
        forward, bucket = (compiled, CAPTION_BUCKET) if stage.compile else (run.model, 1)
        losses, grad_norm, lr = train_step(run, forward, bucket, autocast)
        return StepResult(losses, grad_norm, lr, log={"stage": stage.name}, state={"stage": stage_i, "total": total})

    run_steps(run, step, tc, total, end, desc="train", progress=progress)
    export = export_dir if export_dir is not None else cfg.export
    done = run.step >= total and export
    return {"out": out, "step": run.step, "export": export_model(run, export) if done else None, "log": run.log_path}
