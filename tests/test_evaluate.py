"""Evaluator: detection of colour / direction / speed in frames, Spearman, prompts, and the eval subcommand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lumina_rt.data import COLOURS, DIRECTIONS, render_clip
from lumina_rt.data.captions import HELD_OUT, SPEEDS
from lumina_rt.data.synthetic import random_spec
from lumina_rt.errors import ConfigError
from lumina_rt.training.evaluate import EvalPrompt, eval_prompts, rankdata, score_videos, spearman


def test_spearman_and_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert rankdata(np.array([5.0, 1.0, 5.0, 3.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert abs(spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) - 0.8) < 1e-9
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_eval_prompts_are_held_out_and_cover_speeds():
    prompts = eval_prompts()
    assert len(prompts) == 3 * len(HELD_OUT)
    assert {(p.colour, p.shape, p.direction) for p in prompts} == set(HELD_OUT)
    assert {p.speed for p in prompts} == set(SPEEDS)
    assert len({p.motion for p in prompts}) == len(prompts)  # distinct requested scores
    for p in prompts:
        assert p.colour in p.prompt and p.direction in p.prompt and p.speed in p.prompt


def _videos(prompts: list[EvalPrompt], source="toon") -> torch.Tensor:
    rng = np.random.default_rng(0)
    clips = []
    for p in prompts:
        spec = random_spec(rng, source, p.colour, p.shape, p.direction, p.speed)
        clips.append(render_clip(spec.__class__(**{**spec.to_dict(), "speed": p.motion})))
    return torch.stack(clips)


def test_perfect_videos_score_full_adherence():
    prompts = eval_prompts()
    for source in ("toon", "grainy"):
        r = score_videos(_videos(prompts, source), prompts)
        assert r["colour_adherence"] == 100.0 and r["direction_adherence"] == 100.0
        assert r["speed_word_adherence"] == 100.0 and r["spearman_motion"] > 0.98
        assert set(r["by_speed"]) == set(SPEEDS) and all(v["n"] == 12 for v in r["by_speed"].values())
        assert all(v["direction_adherence"] == 100.0 for v in r["by_speed"].values())
        slow, fast = r["by_speed"]["slowly"], r["by_speed"]["quickly"]
        assert slow["mean_measured_motion"] < fast["mean_measured_motion"]


def test_wrong_videos_score_low():
    prompts = eval_prompts()[:12]
    colours, dirs = list(COLOURS), list(DIRECTIONS)
    swapped = [
        EvalPrompt(
            colours[(colours.index(p.colour) + 1) % 6],
            p.shape,
            dirs[(dirs.index(p.direction) + 1) % 4],
            p.speed,
            p.motion,
            p.prompt,
        )
        for p in prompts
    ]
    r = score_videos(_videos(swapped), prompts)
    assert r["colour_adherence"] == 0.0 and r["direction_adherence"] == 0.0
    blank = torch.full((3, 3, 8, 32, 32), 0.5)  # no object at all
    r = score_videos(blank, prompts[:3])
    assert r["object_found"] == 0.0 and r["colour_adherence"] == 0.0


def test_eval_subcommand_is_registered():
    from lumina_rt.cli import build_parser

    args = build_parser().parse_args(["eval", "--steps", "8", "--schedules", "single_scale"])
    assert args.steps == 8 and args.schedules == "single_scale"


def test_eval_with_cpu_kernels_and_bf16_keeps_adherence():
    """The built-in model evaluated with the C++ kernels in bf16 scores as the fp32 reference does (same seeds)."""
    from lumina_rt import ops
    from lumina_rt.training.evaluate import evaluate_model

    if "cpu-fused" not in ops.available_backends():
        pytest.fail("the C++ extension lumina_rt._C is not built")
    runs = {
        (kernels, precision): evaluate_model(schedules=("single_scale",), steps=6, kernels=kernels, precision=precision)
        for kernels, precision in (("torch", "fp32"), ("cpu-fused", "bf16"))
    }
    fused = runs["cpu-fused", "bf16"]
    assert fused["kernels"] == "cpu-fused" and fused["precision"] == "bf16"
    a, b = runs["torch", "fp32"]["schedules"]["single_scale"], fused["schedules"]["single_scale"]
    assert a["colour_adherence"] > 80 and abs(a["colour_adherence"] - b["colour_adherence"]) <= 100 / 36 * 2
    assert abs(a["direction_adherence"] - b["direction_adherence"]) <= 100 / 36 * 3


def test_heldout_split_rephrases_the_same_prompts_with_words_training_never_used():
    from lumina_rt.data import captions as C
    from lumina_rt.data.captions import tokenize

    combos, held = eval_prompts(), eval_prompts("heldout")
    assert [(p.colour, p.shape, p.direction, p.speed, p.motion) for p in combos] == [
        (p.colour, p.shape, p.direction, p.speed, p.motion) for p in held
    ]
    training = C.split_words("train") | set(C.vocabulary("v1"))
    heldout_words = C.split_words("heldout")
    for p in held:
        words = set(tokenize(p.prompt))
        assert words <= heldout_words and words & training <= {"a", "the", ","}, p.prompt
    used = {w for p in held for w in tokenize(p.prompt)}
    assert set(C.V2_BACKGROUND_SPLITS["heldout"]) <= used  # both held-out backgrounds, every template
    assert len({p.prompt.split()[0] for p in held}) == len(C.V2_VIDEO_TEMPLATES["heldout"])
    with pytest.raises(ConfigError):
        eval_prompts("train")


def test_heldout_split_scores_perfect_64px_v2_videos_fully():
    """Videos drawn by the v2 renderer at 64 px on the held-out backgrounds, with distractors: full adherence."""
    from lumina_rt.data.synthetic import random_spec_v2

    prompts = eval_prompts("heldout")
    rng = np.random.default_rng(1)
    clips = []
    for i, p in enumerate(prompts):
        spec = random_spec_v2(rng, ("toon", "grainy")[i % 2], p.colour, p.shape, p.direction, p.speed, 8, "heldout")
        clips.append(render_clip(spec.__class__(**{**spec.to_dict(), "speed": p.motion}), 8, 64))
    r = score_videos(torch.stack(clips), prompts)
    assert r["colour_adherence"] == 100.0 and r["direction_adherence"] == 100.0 and r["spearman_motion"] > 0.97


def test_eval_split_option_and_video_size_from_the_train_config(tmp_path):
    import json

    from lumina_rt.builtin import BUILTIN_DEFAULT_SIZE, builtin_dir, trained_size
    from lumina_rt.cli import build_parser

    assert build_parser().parse_args(["eval"]).split == "combos"
    assert build_parser().parse_args(["eval", "--split", "heldout"]).split == "heldout"
    assert trained_size(builtin_dir()) == BUILTIN_DEFAULT_SIZE == (8, 32, 32)  # the built-in model's last stage
    assert trained_size(tmp_path) == (8, 32, 32)  # no train_config.json
    (tmp_path / "train_config.json").write_text(
        json.dumps({"stages": [{"size": 16, "frames": 4}, {"size": 64, "frames": 8}]})
    )
    assert trained_size(tmp_path) == (8, 64, 64)
