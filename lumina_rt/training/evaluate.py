"""Evaluator: does a generated video show the requested colour, direction and speed?

For frames [3, F, H, W] in [0, 1] (`lumina_rt.data.motion.analyse_frames`): the object is the high-chroma
region (the data's backgrounds are low-chroma), its colour the nearest palette hue, its direction the
dominant axis of its centroid trajectory, its speed the mean centroid displacement per frame (pixels at 32 px).

`evaluate_model` samples the held-out prompts (colour / shape / direction combinations never seen in training)
at three speeds, with a distinct requested motion score per prompt, and reports for each sampling schedule:
colour adherence, direction adherence, speed-word adherence, and the Spearman rank correlation between
requested and measured motion. `lumina-rt eval` (lumina_rt/cli/eval.py) runs it.

Two prompt splits (`EVAL_SPLITS`): "combos" (v1's evaluation: the held-out combinations phrased with the v1
training templates and backgrounds) and "heldout" (the same combinations, speeds and requested scores phrased with
the v2 caption set's held-out templates, paraphrases and backgrounds, none of which any training caption contains).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumina_rt.builtin import UNTRAINED_SIZE, trained_size
from lumina_rt.data import captions as C
from lumina_rt.data.motion import analyse_frames
from lumina_rt.errors import ConfigError

logger = logging.getLogger(__name__)

EVAL_BACKGROUNDS = ("plain", "striped", "dotted")
EVAL_SPLITS = ("combos", "heldout")
SPLIT_DESCRIPTIONS = {
    "combos": "held-out (colour, shape, direction) x 3 speeds",
    "heldout": "held-out (colour, shape, direction) x 3 speeds, held-out templates, paraphrases and backgrounds",
}


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        idx = values == v
        if idx.sum() > 1:
            ranks[idx] = ranks[idx].mean()
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); nan if either side is constant."""
    ra, rb = rankdata(np.asarray(a)), rankdata(np.asarray(b))
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass(frozen=True)
class EvalPrompt:
    colour: str
    shape: str
    direction: str
    speed: str
    motion: float  # requested motion score
    prompt: str


def eval_prompts(split: str = "combos") -> list[EvalPrompt]:
    """Held-out combinations x 3 speeds (36 prompts); requested scores spread inside each speed's range.

    `split` "combos": v1 phrasing (first training template, training backgrounds); "heldout": the v2 held-out
    templates, paraphrases and backgrounds (`captions.video_caption_v2(..., split="heldout")`), same scores."""
    if split not in EVAL_SPLITS:
        raise ConfigError(f"eval split {split!r} is not one of {', '.join(EVAL_SPLITS)}")
    out = []
    n = len(C.HELD_OUT)
    heldout_bgs = C.V2_BACKGROUND_SPLITS["heldout"]
    for si, speed in enumerate(C.SPEEDS):
        lo, hi = C.SPEED_RANGES[speed]
        for j, (colour, shape, direction) in enumerate(C.HELD_OUT):
            k = (j * 5 + si) % n  # spread the requested scores over the combinations
            motion = round(lo + (hi - lo) * (k + 0.5) / n, 4)
            if split == "combos":
                bg = EVAL_BACKGROUNDS[(j + si) % len(EVAL_BACKGROUNDS)]
                prompt = C.video_caption(colour, shape, direction, speed, bg)
            else:  # every held-out template, background word and filler in turn
                bg = heldout_bgs[(j + si) % len(heldout_bgs)]
                choice = j + n * si
                prompt = C.video_caption_v2(colour, shape, direction, speed, bg, choice, split="heldout")
            out.append(EvalPrompt(colour, shape, direction, speed, motion, prompt))
    return out


def _percent(rows: list[dict[str, Any]], key: str) -> float:
    """Share of rows whose boolean `key` holds, in percent (0 for no rows)."""
    return round(100.0 * sum(r[key] for r in rows) / max(1, len(rows)), 2)


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return round(sum(r[key] for r in rows) / max(1, len(rows)), 4)


def score_videos(videos: torch.Tensor, prompts: list[EvalPrompt]) -> dict[str, Any]:
    """Adherence and motion correlation of videos [B, 3, F, H, W] in [0, 1] against their prompts."""
    rows = []
    for video, p in zip(videos, prompts):
        a = analyse_frames(video)
        rows.append(
            dict(
                prompt=p.prompt,
                requested_motion=p.motion,
                colour=a.colour,
                direction=a.direction,
                measured_motion=round(a.score, 4),
                speed_word=C.speed_word(a.score) if a.present else None,
                colour_ok=a.colour == p.colour,
                direction_ok=a.direction == p.direction,
                speed_ok=a.present and C.speed_word(a.score) == p.speed,
                present=a.present,
            )
        )
    by_speed = {}
    for speed in C.SPEEDS:
        sub = [r for r, p in zip(rows, prompts) if p.speed == speed]
        if sub:
            by_speed[speed] = dict(
                n=len(sub),
                direction_adherence=_percent(sub, "direction_ok"),
                mean_measured_motion=_mean(sub, "measured_motion"),
                mean_requested_motion=_mean(sub, "requested_motion"),
            )
    return dict(
        n=len(rows),
        colour_adherence=_percent(rows, "colour_ok"),
        direction_adherence=_percent(rows, "direction_ok"),
        speed_word_adherence=_percent(rows, "speed_ok"),
        object_found=_percent(rows, "present"),
        spearman_motion=round(spearman([r["requested_motion"] for r in rows], [r["measured_motion"] for r in rows]), 4),
        by_speed=by_speed,  # direction adherence and mean motion per requested speed word
        samples=rows,
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each video of a against b ([N, 3, F, H, W] in [0, 1]); identical videos give inf."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def _generate_schedule(
    pipeline: Any, name: str, prompts: list[EvalPrompt], seeds: tuple[int, ...], batch: int,
    steps: int | None, cfg: float | None, cache: Any, video: tuple[int, int, int] = UNTRAINED_SIZE,
) -> tuple[torch.Tensor, int, float]:  # fmt: skip
    """Videos of every seed and prompt with one schedule, the model evaluations they took, and the seconds."""
    t0 = time.time()
    videos, evaluations = [], 0
    overrides = {k: v for k, v in (("steps", steps), ("cfg", cfg)) if v is not None}
    for seed in seeds:
        for i in range(0, len(prompts), batch):
            chunk = prompts[i : i + batch]
            res = pipeline.generate(
                [p.prompt for p in chunk], frames=video[0], height=video[1], width=video[2], preset=name,
                item_motion=[p.motion for p in chunk], seed=seed * 1000 + i, cache=cache, progress=False, **overrides,
            )  # fmt: skip
            videos.append(res.frames)
            evaluations += res.evaluations
    return torch.cat(videos), evaluations, time.time() - t0


def evaluate_model(
    directory: str | Path | None = None,
    schedules: tuple[str, ...] = ("single_scale", "multi_scale"),
    steps: int | None = None,
    cfg: float | None = None,
    seeds: tuple[int, ...] = (0,),
    save_videos: str | Path | None = None,
    batch: int = 36,
    cache: str | float | None = None,
    kernels: str = "torch",
    precision: str = "fp32",
    split: str = "combos",
) -> dict[str, Any]:
    """Generate the held-out prompts of `split` (`eval_prompts`) with each schedule and score them; returns the
    report dict. Videos have the checkpoint's training size (`lumina_rt.builtin.trained_size`).

    `kernels` is the `lumina_rt.ops` kernel backend the model runs with (``cpu-fused``: the C++ ops and attention
    kernel) and `precision` its weights' and activations' precision (fp32 or bf16); both are in the report.

    With `cache` (a step-caching level or threshold, `lumina_rt.caching`) each schedule runs twice, uncached and
    cached, on the same seeds: the scores are the cached videos', and `cache` in the report holds the uncached
    scores, both evaluation counts and wall times, and the PSNR of the cached frames against the uncached ones.
    """
    from lumina_rt import ops
    from lumina_rt.builtin import builtin_dir
    from lumina_rt.builtin.reference import sample_presets
    from lumina_rt.caching import StepCache
    from lumina_rt.pipeline import Pipeline
    from lumina_rt.tolerances import DTYPES

    directory = Path(builtin_dir() if directory is None else directory)
    policy = StepCache.from_setting(cache)
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"eval precision {precision!r} is not one of fp32, bf16")
    pipeline = Pipeline.from_checkpoint(directory, dtype=DTYPES[precision])
    prompts = eval_prompts(split)
    video = trained_size(directory)
    report: dict[str, Any] = {
        "model": str(directory),
        "kernels": kernels,
        "precision": precision,
        "split": split,
        "video": list(video),
        "prompts": SPLIT_DESCRIPTIONS[split],
        "seeds": list(seeds),
        "schedules": {},
    }
    presets = sample_presets(directory)
    metas = [p for _ in seeds for p in prompts]
    with ops.use_backend(kernels):
        for name in schedules:
            _evaluate_schedule(report, pipeline, name, prompts, metas, seeds, batch, steps, cfg, policy, presets,
                               save_videos, video)  # fmt: skip
    return report


def _evaluate_schedule(
    report: dict[str, Any], pipeline: Any, name: str, prompts: list[EvalPrompt], metas: list[EvalPrompt],
    seeds: tuple[int, ...], batch: int, steps: int | None, cfg: float | None, policy: Any, presets: dict[str, Any],
    save_videos: str | Path | None, video: tuple[int, int, int] = UNTRAINED_SIZE,
) -> None:  # fmt: skip
    """One schedule of `evaluate_model`: generate, score (uncached and cached with a policy), save, log."""
    from lumina_rt.video import write_video

    all_videos, evaluations, seconds = _generate_schedule(
        pipeline, name, prompts, seeds, batch, steps, cfg, None, video
    )
    result = score_videos(all_videos, metas)
    if policy is not None:
        plain = {k: result[k] for k in ("colour_adherence", "direction_adherence", "speed_word_adherence",
                                        "spearman_motion")}  # fmt: skip
        cached, cached_evals, cached_s = _generate_schedule(pipeline, name, prompts, seeds, batch, steps, cfg, policy,
                                                            video)  # fmt: skip
        db = psnr(cached, all_videos)
        result = score_videos(cached, metas)
        result["cache"] = {
            "policy": policy.name, "threshold": policy.threshold, "evaluations": cached_evals,
            "uncached_evaluations": evaluations, "reduction": round(evaluations / cached_evals, 3),
            "seconds": round(cached_s, 1), "uncached_seconds": round(seconds, 1),
            "psnr_mean_db": round(float(db.clamp(max=99).mean()), 2),
            "psnr_min_db": round(float(db.clamp(max=99).min()), 2), "uncached": plain,
        }  # fmt: skip
        all_videos, seconds = cached, cached_s
    config = dict(presets[name])
    if steps is not None:
        config["step"] = steps
    if cfg is not None:
        config["cfg"] = cfg
    result["sample_config"] = config
    result["seconds"] = round(seconds, 1)
    report["schedules"][name] = result
    if save_videos is not None:
        for k, (video, p) in enumerate(zip(all_videos[:12], metas[:12])):
            path = Path(save_videos) / name / f"{k:02d}_{p.prompt.replace(' ', '_')[:60]}.gif"
            write_video(video, path, scale=4)
    logger.info(
        "%s: colour %.1f%%  direction %.1f%%  spearman %.3f  (%.0fs)",
        name,
        result["colour_adherence"],
        result["direction_adherence"],
        result["spearman_motion"],
        result["seconds"],
    )


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"kernels {report.get('kernels', 'torch')}, precision {report.get('precision', 'fp32')}, "
             f"split {report.get('split', 'combos')}"]  # fmt: skip
    lines.append(f"{'schedule':<14} {'colour %':>9} {'direction %':>12} {'speed-word %':>13} {'spearman':>9} {'s':>6}")
    for name, r in report["schedules"].items():
        lines.append(
            f"{name:<14} {r['colour_adherence']:>9.1f} {r['direction_adherence']:>12.1f} "
            f"{r['speed_word_adherence']:>13.1f} {r['spearman_motion']:>9.3f} {r['seconds']:>6.1f}"
        )
    lines.append("direction % by requested speed (slowly / steadily / quickly):")
    for name, r in report["schedules"].items():
        per = r.get("by_speed", {})
        cells = [f"{per[s]['direction_adherence']:.1f}" for s in C.SPEEDS if s in per]
        lines.append(f"  {name:<12} " + " / ".join(cells))
    for name, r in report["schedules"].items():
        c = r.get("cache")
        if c:
            u = c["uncached"]
            lines.append(
                f"cache {c['policy']} on {name}: {c['evaluations']} / {c['uncached_evaluations']} model evaluations "
                f"({c['reduction']:.2f}x fewer), {c['seconds']:.0f} / {c['uncached_seconds']:.0f} s, PSNR vs uncached "
                f"{c['psnr_mean_db']:.1f} dB (min {c['psnr_min_db']:.1f}); uncached colour {u['colour_adherence']:.1f} "
                f"direction {u['direction_adherence']:.1f} spearman {u['spearman_motion']:.3f}"
            )
    return lines
