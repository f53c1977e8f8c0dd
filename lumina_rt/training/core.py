"""The trainer core: what the video trainer (`lumina_rt.training.video`) and the V2A trainer (`lumina_rt.v2a.train`)
both run, written once.

- the `train` config section (`TrainSettings`) and its learning-rate schedule (linear warm-up, cosine decay);
- rectified flow matching: x_t = t x1 + (1 - t) x0 (x0 noise, x1 data), target v = x1 - x0, times logit-normal (or
  uniform) through the sampler's time shift, the velocity MSE (+ the released optional cosine term);
- condition dropout for CFG (caption -> "", the system prompt stays; motion score -> -1);
- every random draw of step k from a generator seeded by (seed, k, stream), so an interrupted and resumed run ends
  with exactly the weights of an uninterrupted one;
- the optimizer step (gradient clipping, AdamW, EMA of the weights);
- atomic, resumable checkpoints (`save_checkpoint`, `latest_checkpoint`, `prune_checkpoints`,
  `resume_from_checkpoint`) and the step loop (`run_steps`: progress bar, JSON-lines log, checkpoint cadence).

Each trainer keeps what is its own: its config sections, model, data, and what one step feeds the model.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from lumina_rt.checkpoint import NATIVE_WEIGHTS, save_native
from lumina_rt.errors import CheckpointError
from lumina_rt.files import atomic_path, atomic_write, save_tensors
from lumina_rt.sampling import shift_time

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# The `train` section
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    """The `train` section (both trainers; the V2A trainer ignores the video-only image, motion, patch-size, autocast
    and compile settings)."""

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


def learning_rate(tc: TrainSettings, step: int, total: int) -> float:
    """Linear warm-up, constant, then (from `lr_decay_start`) a cosine down to `lr_min_ratio` * lr."""
    lr = tc.lr * min(1.0, (step + 1) / tc.warmup) if tc.warmup else tc.lr
    start = tc.lr_decay_start
    if start is not None and step >= start and total > start:
        frac = (step - start) / max(1, total - 1 - start)
        lr = lr * (tc.lr_min_ratio + (1 - tc.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
    return lr


def set_learning_rate(
    opt: torch.optim.Optimizer, tc: TrainSettings, step: int, total: int, fixed: float | None = None
) -> float:
    """Set every parameter group to `learning_rate(tc, step, total)`, or to `fixed` when given; returns it."""
    lr = learning_rate(tc, step, total) if fixed is None else float(fixed)
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def set_threads(tc: TrainSettings, threads: int | None = None) -> None:
    """torch's thread count: `threads` (a caller's override), else the config's (on a shared machine 1 can be
    faster)."""
    if threads or tc.threads:
        torch.set_num_threads(int(threads or tc.threads))


# ------------------------------------------------------------------------------------------------
# Random draws, flow matching, condition dropout
# ------------------------------------------------------------------------------------------------


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """The generator of step `step`'s random draws (noise, times, dropouts) on one stream (each trainer has its own)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) * 97 + int(stream))


def sample_times(n: int, shift: float, mode: str, gen: torch.Generator) -> torch.Tensor:
    """n training times: logit-normal base t = sigmoid(N(0, 1)) (or uniform), through the sampler's time shift."""
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
    """(x_t, t, target velocity) for data x1 [B, ...] (video or audio latents)."""
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
# Optimizer and EMA
# ------------------------------------------------------------------------------------------------


def adamw(model: torch.nn.Module, tc: TrainSettings, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over the model's parameters with the section's lr, betas and weight decay (`fused`: one kernel over all
    parameters, same update math)."""
    return torch.optim.AdamW(
        model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay, fused=fused or None
    )


def new_ema(model: torch.nn.Module, decay: float) -> dict[str, torch.Tensor] | None:
    """A copy of the weights to average into, or None when EMA is off (decay 0)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()} if decay > 0 else None


def update_ema(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- d ema + (1 - d) weights, with d = min(decay, (1 + step) / (10 + step)) (a short warm-up)."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for k, v in model.state_dict().items():
            ema[k].mul_(d).add_(v.detach(), alpha=1 - d)


class TrainState(Protocol):
    """What the core needs of a trainer's run (`TrainRun`, `V2ATrainRun`)."""

    out: Path
    model: Any  # an nn.Module with a `config` (ModelConfig, V2AConfig)
    opt: torch.optim.Optimizer
    ema: dict[str, torch.Tensor] | None
    step: int
    elapsed_before: float  # training seconds of earlier segments (a resumed run keeps counting)

    @property
    def log_path(self) -> Path: ...


def optimizer_step(run: TrainState, tc: TrainSettings) -> float:
    """After the backward pass(es) of step `run.step`: clip the gradients to `grad_clip`, step the optimizer, update the
    EMA. Returns the gradient norm before clipping."""
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip))
    run.opt.step()
    if run.ema is not None:
        update_ema(run.ema, run.model, tc.ema, run.step)
    return grad_norm


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
            save_tensors(ema, tmp / "ema.safetensors")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **extra}, indent=1))
    atomic_write(root / "latest", final.name)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint out/checkpoints/latest names, None when there is none (CheckpointError if it is incomplete)."""
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


def resume_from_checkpoint(run: TrainState, enabled: bool = True) -> bool:
    """Continue from the latest checkpoint under run.out (weights, optimizer, EMA, step, elapsed time, the log up to
    that step); without one (or with `enabled` False) start a fresh log. Returns whether it resumed."""
    latest = latest_checkpoint(run.out) if enabled else None
    log_path = run.log_path
    if latest is None:
        if log_path.exists():
            log_path.unlink()
        return False
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
    return True


# ------------------------------------------------------------------------------------------------
# The step loop
# ------------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """What one training step reports: loss per task, gradient norm before clipping, learning rate; `log`: fields of
    the log line and progress bar (e.g. the stage's name); `state`: fields of the checkpoint's trainer_state.json."""

    losses: dict[str, float]
    grad_norm: float
    lr: float
    log: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


def run_steps(
    run: TrainState,
    step: Callable[[], StepResult],
    tc: TrainSettings,
    total: int,
    end: int,
    desc: str = "train",
    progress: bool = True,
    task_losses: bool = True,
) -> float:
    """Call `step()` (one iteration at `run.step`) until `run.step` reaches `end` (of `total`), advancing `run.step`.

    Every `log_every` steps (and at `end`) appends a JSON line to run.log_path: step, the step's `log` fields, lr,
    grad_norm, the mean loss per task since the last line (`loss/<task>`, with `task_losses`), their mean (`loss`) and
    the training seconds so far (`elapsed_s`); every `ckpt_every` steps (and at `end`) saves a checkpoint (with the
    step's `state` fields) and keeps the newest `keep_checkpoints`. Returns the training seconds so far.
    """
    bar = tqdm(total=total, initial=run.step, desc=desc, unit="it", disable=not progress, dynamic_ncols=True)
    t_start = time.time()
    running: dict[str, float] = {}
    count = 0
    while run.step < end:
        res = step()
        run.step += 1
        for k, v in res.losses.items():
            running[k] = running.get(k, 0.0) + v
        count += 1
        bar.update(1)
        bar.set_postfix(**res.log, loss=f"{sum(res.losses.values()) / len(res.losses):.4f}")
        elapsed = round(run.elapsed_before + time.time() - t_start, 1)
        if run.step % tc.log_every == 0 or run.step == end:
            rec = {"step": run.step, **res.log, "lr": res.lr, "grad_norm": round(res.grad_norm, 4)}
            if task_losses:
                rec.update({f"loss/{k}": round(v / count, 5) for k, v in running.items()})
            rec["loss"] = round(sum(v / count for v in running.values()) / len(running), 5)
            rec["elapsed_s"] = elapsed
            with open(run.log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            logger.debug("%s", rec)
            running, count = {}, 0
        if run.step % tc.ckpt_every == 0 or run.step == end:
            save_checkpoint(run.out, run.step, run.model, run.opt, run.ema, {**res.state, "elapsed_s": elapsed})
            prune_checkpoints(run.out, tc.keep_checkpoints)
    bar.close()
    return round(run.elapsed_before + time.time() - t_start, 1)
