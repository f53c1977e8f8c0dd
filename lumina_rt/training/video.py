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

Every random draw of step k comes from generators seeded by (seed, k), so an interrupted and resumed run ends
with exactly the weights of an uninterrupted one.

Layout: `TrainConfig` (the config, validated in one place) -> `setup` (model, encoder, data, optimizer, latent)
-> `resume_from_latest` -> `train_step` per iteration (+ log, checkpoint) -> `export_model`; `train` drives them.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from lumina_rt.checkpoint import NATIVE_WEIGHTS, save_native
from lumina_rt.config import ModelConfig
from lumina_rt.errors import CheckpointError, ConfigError
from lumina_rt.files import atomic_path, atomic_write
from lumina_rt.model import MultiScaleNextDiT
from lumina_rt.sampling import pad_caption_tokens, shift_time

logger = logging.getLogger(__name__)

CAPTION_BUCKET = 8  # compiled stages pad caption tokens to a multiple of this (eager stages: 1, no padding)


# ------------------------------------------------------------------------------------------------
# Config: one dataclass per section, validated in `TrainConfig.from_dict`
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    """The `train` section."""

    seed: int = 0
    batch_size: int = 8  # videos per iteration (every patch size sees the same clips, fresh noise and times)
    image_batch_size: int = 8  # images per iteration (finest patch only); 0 disables joint training
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup: int = 0
    lr_decay_start: int | None = None  # step from which lr follows a cosine down to lr_min_ratio * lr at the end
    lr_min_ratio: float = 0.1
    grad_clip: float = 2.0
    ema: float = 0.0  # EMA decay; 0 disables
    vd_weight: float = 0.0  # released optional cosine term
    autocast: str = "none"  # "bf16": CPU mixed precision (bf16 linear layers, fp32 weights, attention and loss)
    compile: bool = False  # torch.compile (inductor) the model's forward and backward; a stage's "compile" overrides
    motion_drop: float = 0.4
    caption_drop: float = 0.1
    time_sampling: str = "logit-normal"  # or "uniform"
    shifts: dict[str, float] = field(default_factory=dict)  # combo -> time shift; "image"; default: task_shifts
    multiscale: bool = True  # Algorithm 1: all patch sizes every iteration (False: finest only, for ablation)
    log_every: int = 10
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    threads: int = 2
    text_seed: int = 0


@dataclass
class DataSettings:
    """The `data` section: the synthetic multi-source dataset."""

    sources: list[str] = field(default_factory=lambda: ["toon", "grainy"])
    hold_out: bool = True
    seed: int = 0


@dataclass
class LatentSettings:
    """The `latent` section: "pixels" (in_channels 3) or "pca" (a linear autoencoder fitted on `fit_clips` clips at
    the last stage's size: `channels` whitened components of `factor` x `factor` pixel blocks)."""

    kind: str = "pixels"
    channels: int = 12
    factor: int = 4
    fit_clips: int = 512


@dataclass
class Stage:
    """One entry of `stages`: `iters` iterations at `size` x `size` pixels, `frames` frames every `frame_stride`."""

    iters: int
    size: int
    frames: int
    frame_stride: int = 1
    name: str = ""  # default: "stage<i>"
    compile: bool | None = None  # default: the train section's


def _section(cls: type, raw: Any, where: str) -> Any:
    """`cls(**raw)`, refusing a non-object section and naming unknown keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object of settings, got {raw!r}")
    accepted = [f.name for f in fields(cls)]
    bad = sorted(set(raw) - set(accepted))
    if bad:
        raise ConfigError(f"unknown {where} keys {bad}; accepted: {sorted(accepted)}")
    return cls(**copy.deepcopy(raw))


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
    stages: list[Stage]
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
        train = _section(TrainSettings, raw.get("train", {}), "train")
        data = _section(DataSettings, raw.get("data", {}), "data")
        latent = _section(LatentSettings, raw.get("latent", {}), "latent")
        _choice("latent kind", latent.kind, ("pixels", "pca"))
        _choice("autocast", train.autocast, ("none", "bf16"))
        _choice("time_sampling", train.time_sampling, ("logit-normal", "uniform"))
        if not isinstance(train.compile, bool):
            raise ConfigError(f"train: compile must be true or false, got {train.compile!r}")
        stages = []
        for i, entry in enumerate(raw.get("stages") or [dict(iters=100, size=32, frames=8, frame_stride=1)]):
            if isinstance(entry, dict):
                missing = {"iters", "size", "frames"} - set(entry)
                if missing:
                    raise ConfigError(f"stage {i} lacks {sorted(missing)}")
            st = _section(Stage, entry, f"stage {i}")
            for key in ("iters", "size", "frames", "frame_stride"):
                value = getattr(st, key)
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ConfigError(f"stage {i}: {key} must be a positive integer, got {value!r}")
            st.name = st.name or f"stage{i}"
            st.compile = train.compile if st.compile is None else st.compile
            if not isinstance(st.compile, bool):
                raise ConfigError(f"stage {i}: compile must be true or false, got {st.compile!r}")
            stages.append(st)
        model = ModelConfig.from_kwargs(raw.get("model", {}), name="builtin")
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

    def stage_at(self, step: int) -> tuple[int, Stage]:
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
# Loss and time sampling
# ------------------------------------------------------------------------------------------------


def sample_times(n: int, shift: float, mode: str, gen: torch.Generator) -> torch.Tensor:
    base = torch.sigmoid(torch.randn(n, generator=gen)) if mode == "logit-normal" else torch.rand(n, generator=gen)
    return shift_time(base, shift)


def flow_matching_loss(pred: torch.Tensor, target: torch.Tensor, vd_weight: float = 0.0) -> torch.Tensor:
    """Velocity MSE, plus `vd_weight * (1 - cosine similarity over the channel axis)` when vd_weight > 0."""
    loss = F.mse_loss(pred.float(), target.float())
    if vd_weight > 0:
        loss = loss + vd_weight * (1 - F.cosine_similarity(pred.float(), target.float(), dim=1)).mean()
    return loss


def flow_matching_inputs(
    x1: torch.Tensor, shift: float, mode: str, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target velocity) for data x1 [B, C, F, H, W]."""
    b = x1.shape[0]
    t = sample_times(b, shift, mode, gen)
    x0 = torch.randn(x1.shape, generator=gen)
    tt = t.view(b, *([1] * (x1.dim() - 1)))
    return tt * x1 + (1 - tt) * x0, t, x1 - x0


def drop_conditions(
    captions: list[str], motion: torch.Tensor, caption_p: float, motion_p: float, gen: torch.Generator
) -> tuple[list[str], torch.Tensor]:
    """Caption dropout (caption -> "", the system prompt stays) and motion dropout (score -> -1)."""
    n = len(captions)
    drop_cap = torch.rand(n, generator=gen) < caption_p
    drop_motion = torch.rand(n, generator=gen) < motion_p
    caps = ["" if d else c for c, d in zip(captions, drop_cap.tolist())]
    return caps, torch.where(drop_motion, torch.full_like(motion, -1.0), motion)


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------


def save_checkpoint(out: Path, step: int, model, opt, ema: dict[str, torch.Tensor] | None, extra: dict) -> Path:
    """Write checkpoints/step-N (native layout + optimizer + EMA + trainer state) atomically, then `latest`."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    with atomic_path(final, directory=True) as tmp:
        save_native(tmp, model.config, model.state_dict())
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **extra}, indent=1))
    atomic_write(root / "latest", final.name)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    pointer = out / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = out / "checkpoints" / pointer.read_text().strip()
    if not (path / "trainer_state.json").is_file():
        raise CheckpointError(f"{str(pointer)!r} names {str(path)!r}, which is not a complete checkpoint")
    return path


def prune_checkpoints(out: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints under out/checkpoints."""
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    for old in ckpts[: max(0, len(ckpts) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------


def _step_generator(seed: int, step: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 97 + salt)


def learning_rate(tc: TrainSettings, step: int, total: int) -> float:
    """Linear warm-up, constant, then (from `lr_decay_start`) a cosine down to `lr_min_ratio` * lr."""
    lr = tc.lr * min(1.0, (step + 1) / tc.warmup) if tc.warmup else tc.lr
    start = tc.lr_decay_start
    if start is not None and step >= start and total > start:
        frac = (step - start) / max(1, total - 1 - start)
        lr = lr * (tc.lr_min_ratio + (1 - tc.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
    return lr


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
    encoder = TinyTextEncoder.create(dim=mcfg.cap_feat_dim, seed=int(tc.text_seed))
    dataset = SyntheticDataset(
        seed=int(cfg.data.seed), sources=tuple(cfg.data.sources), hold_out=bool(cfg.data.hold_out)
    )
    # fused: one kernel over all parameters (1.2 vs 4.5 ms per step for the built-in model, same update math)
    opt = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay, fused=True
    )
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if tc.ema > 0 else None
    autoencoder = None
    if cfg.latent.kind == "pca":
        if resume and (out / AE_WEIGHTS).is_file():
            autoencoder = PCAAutoencoder.load(out)
        else:
            last = cfg.stages[-1]
            n_fit = int(cfg.latent.fit_clips)
            clips = torch.cat([dataset.video_batch(10**9 + i, 32, last.size, last.frames).x
                               for i in range((n_fit + 31) // 32)])[:n_fit]  # fmt: skip
            autoencoder = PCAAutoencoder.fit(clips, int(cfg.latent.channels), int(cfg.latent.factor))
            autoencoder.save(out)
    return TrainRun(cfg, out, model, encoder, dataset, opt, ema, autoencoder, task_shifts(mcfg, tc.shifts))


def resume_from_latest(run: TrainRun, enabled: bool = True) -> None:
    """Continue from the run's latest checkpoint (weights, optimizer, EMA, step, log up to that step), or start a
    fresh log; then record the filled-in config (train_config.json) and the autoencoder."""
    from lumina_rt.builtin import AE_WEIGHTS

    out, log_path = run.out, run.log_path
    latest = latest_checkpoint(out) if enabled else None
    if latest is not None:
        state = json.loads((latest / "trainer_state.json").read_text())
        run.step = int(state["step"])
        run.elapsed_before = float(state.get("elapsed_s", 0.0))
        run.model.load_state_dict(load_file(str(latest / NATIVE_WEIGHTS)), strict=True)
        run.opt.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True))
        if run.ema is not None:
            run.ema = load_file(str(latest / "ema.safetensors"))
        if log_path.is_file():  # drop log lines written after the checkpoint
            keep = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= run.step]
            log_path.write_text("".join(ln + "\n" for ln in keep))
        logger.info("resumed from %s at step %d", latest, run.step)
    elif log_path.exists():
        log_path.unlink()
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
    lr = learning_rate(tc, step, cfg.total_iters)
    for group in run.opt.param_groups:
        group["lr"] = lr
    gen = _step_generator(int(tc.seed), step, 1)
    batch = run.dataset.video_batch(step, tc.batch_size, stage.size, stage.frames, stage.frame_stride)
    caps, motion = drop_conditions(batch.captions, batch.motion, tc.caption_drop, tc.motion_drop, gen)
    feats, mask = pad_captions(*run.encoder.encode(caps, [SYSTEM_PROMPTS[s] for s in batch.sources]), bucket)
    x_video = run.to_latent(batch.x)
    run.opt.zero_grad(set_to_none=True)
    losses = {}
    for combo in combos:  # Algorithm 1: every patch size, gradients accumulated
        pf, p = mcfg.check_combo(combo)
        xt, t, target = flow_matching_inputs(x_video, run.shifts[combo], tc.time_sampling, gen)
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
        xt, t, target = flow_matching_inputs(run.to_latent(ib.x), run.shifts["image"], tc.time_sampling, gen)
        with autocast:
            pred = forward(xt, t, ifeats, imask, ib.motion, p, pf)
        loss = flow_matching_loss(pred, target, tc.vd_weight)
        (loss / n_tasks).backward()
        losses["image"] = loss.item()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip))
    run.opt.step()
    if run.ema is not None:
        decay = min(tc.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in run.model.state_dict().items():
                run.ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
    return losses, grad_norm, lr


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
    if threads or tc.threads:
        torch.set_num_threads(int(threads or tc.threads))
    run = setup(cfg, out, resume)
    resume_from_latest(run, resume)
    total = cfg.total_iters
    end = total if stop_after is None else min(total, int(stop_after))
    bar = tqdm(total=total, initial=run.step, desc="train", unit="it", disable=not progress, dynamic_ncols=True)
    t_start = time.time()
    running: dict[str, float] = {}
    # bf16 mixed precision: the linear layers run in bf16 (~1.5x faster steps on a CPU with AVX-512 BF16),
    # weights, optimizer state, attention (see model._attention) and losses stay float32.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.autocast == "bf16")
    compiled = _compiled_forward(run)
    while run.step < end:
        stage_i, stage = cfg.stage_at(run.step)
        forward, bucket = (compiled, CAPTION_BUCKET) if stage.compile else (run.model, 1)
        losses, grad_norm, lr = train_step(run, forward, bucket, autocast)
        run.step += 1
        step = run.step
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + v
        running["_n"] = running.get("_n", 0.0) + 1
        bar.update(1)
        bar.set_postfix(stage=stage.name, loss=f"{sum(losses.values()) / len(losses):.4f}")
        if step % tc.log_every == 0 or step == end:
            n = running.pop("_n")
            rec = {"step": step, "stage": stage.name, "lr": lr, "grad_norm": round(grad_norm, 4)}
            rec.update({f"loss/{k}": round(v / n, 5) for k, v in running.items()})
            rec["loss"] = round(sum(v / n for v in running.values()) / len(running), 5)
            rec["elapsed_s"] = round(run.elapsed_before + time.time() - t_start, 1)
            with open(run.log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            logger.debug("%s", rec)
            running = {}
        if step % tc.ckpt_every == 0 or step == end:
            elapsed = round(run.elapsed_before + time.time() - t_start, 1)
            extra = {"stage": stage_i, "total": total, "elapsed_s": elapsed}
            save_checkpoint(out, step, run.model, run.opt, run.ema, extra)
            prune_checkpoints(out, tc.keep_checkpoints)
    bar.close()
    export = export_dir if export_dir is not None else cfg.export
    done = run.step >= total and export
    return {"out": out, "step": run.step, "export": export_model(run, export) if done else None, "log": run.log_path}
