"""Synthetic multi-source data: rendering, sources, captions, hold-out, and motion measured from frames."""

from __future__ import annotations

import pytest
import torch

from lumina_rt.data import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SPEED_RANGES,
    SYSTEM_PROMPTS,
    SyntheticDataset,
    analyse_frames,
    is_held_out,
    motion_score,
    render_clip,
)
from lumina_rt.data.captions import speed_word, tokenize, vocabulary
from lumina_rt.data.synthetic import random_spec


def _spec(seed=0, source="toon", colour="red", shape="circle", direction="right", speed="steadily"):
    import numpy as np

    return random_spec(np.random.default_rng(seed), source, colour, shape, direction, speed)


def test_clip_shape_range_and_sizes():
    clip = render_clip(_spec(), frames=8, size=32)
    assert clip.shape == (3, 8, 32, 32)
    assert 0.0 <= float(clip.min()) and float(clip.max()) <= 1.0
    assert render_clip(_spec(), frames=4, size=16, frame_stride=2).shape == (3, 4, 16, 16)


def test_every_colour_shape_direction_is_recovered_from_frames():
    for i, (colour, shape, direction) in enumerate(
        [(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS][::5]
    ):
        for source in SYSTEM_PROMPTS:
            clip = render_clip(_spec(i, source, colour, shape, direction, "steadily"))
            a = analyse_frames(clip)
            assert a.present and a.colour == colour and a.direction == direction, (colour, shape, direction, source)


def test_moving_objects_leave_a_fading_trail_behind_them():
    import dataclasses

    from lumina_rt.data.motion import object_mask
    from lumina_rt.data.synthetic import trail_length

    for direction, (dx, dy) in DIRECTIONS.items():
        spec = dataclasses.replace(_spec(2, direction=direction), x0=16.0, y0=16.0, speed=2.0)  # centred (frame 0)
        mask = object_mask(render_clip(spec, frames=1))[0]
        coords = torch.arange(32, dtype=torch.float32) + 0.5 - 16.0
        along = dx * coords[None, :] + dy * coords[:, None]  # signed distance along the direction of motion
        behind = float(mask[along < -spec.radius - 0.5].sum())
        ahead = float(mask[along > spec.radius + 0.5].sum())
        assert behind > 3.0 and ahead < 0.5, (direction, behind, ahead)  # faded copies only behind the object
    assert trail_length(2.5) > trail_length(1.0) > trail_length(0.4)  # faster objects, longer trails
    # the trail is fainter than the object: at most TRAIL_ALPHA of the colour is blended into the background
    spec = dataclasses.replace(_spec(2, direction="right"), x0=16.0, y0=16.0, speed=2.0)
    frame = render_clip(spec, frames=1)[:, 0]
    chroma = frame.amax(0) - frame.amin(0)
    assert float(chroma[16, 16]) > float(chroma[16, int(16 - spec.radius - 2)]) + 0.2


def test_sources_are_visually_distinct():
    toon = torch.stack([render_clip(_spec(i, "toon")) for i in range(6)])
    grainy = torch.stack([render_clip(_spec(i, "grainy")) for i in range(6)])
    assert float(toon.mean()) > float(grainy.mean()) + 0.3  # bright vs dark backgrounds
    # grainy clips carry per-frame noise: the background changes between frames, toon backgrounds do not
    assert float((grainy[:, :, 1] - grainy[:, :, 0]).abs().median()) > 0.01
    assert float((toon[:, :, 1] - toon[:, :, 0]).abs().median()) == 0.0
    assert SYSTEM_PROMPTS["toon"] != SYSTEM_PROMPTS["grainy"]


def test_motion_score_is_measured_from_frames_not_copied():
    spec = _spec(3, speed="quickly")
    clip = render_clip(spec)
    assert abs(motion_score(clip) - spec.speed) < 0.15  # the measurement agrees with the motion shown
    frozen = clip[:, :1].repeat(1, 8, 1, 1)  # same generator settings, frames without motion
    assert motion_score(frozen) < 0.05
    reversed_clip = clip.flip(1)
    assert analyse_frames(reversed_clip).direction != spec.direction
    half = render_clip(spec, frames=8, size=16)  # resolution-independent unit (pixels at 32 px)
    assert abs(motion_score(half) - spec.speed) < 0.25


def test_speed_words_follow_the_measured_score():
    for word, (lo, hi) in SPEED_RANGES.items():
        assert speed_word(lo) == word and speed_word(hi) == word
    ds = SyntheticDataset(seed=1)
    batch = ds.video_batch(0, 24)
    for cap, score in zip(batch.captions, batch.motion.tolist()):
        assert speed_word(score) in cap


def test_batches_are_deterministic_multi_source_and_hold_out_combinations():
    ds = SyntheticDataset(seed=0)
    a, b = ds.video_batch(5, 32), ds.video_batch(5, 32)
    assert torch.equal(a.x, b.x) and a.captions == b.captions
    assert not torch.equal(a.x, ds.video_batch(6, 32).x)
    assert set(a.sources) == set(SYSTEM_PROMPTS)
    assert a.x.shape == (32, 3, 8, 32, 32) and float(a.x.min()) >= -1 and float(a.x.max()) <= 1
    for step in range(8):
        for s in ds.video_batch(step, 32).specs:
            assert not is_held_out(s.colour, s.shape, s.direction)
    low = ds.video_batch(0, 4, size=16, frames=4, frame_stride=2)
    assert low.x.shape == (4, 3, 4, 16, 16)
    images = ds.image_batch(0, 4)
    assert images.x.shape == (4, 3, 1, 32, 32) and bool((images.motion < 0).all())
    assert all("moving" not in c for c in images.captions)


def test_vocabulary_covers_every_caption_word():
    vocab = set(vocabulary())
    ds = SyntheticDataset(seed=2)
    for cap in ds.video_batch(0, 16).captions + ds.image_batch(0, 16).captions + list(SYSTEM_PROMPTS.values()):
        assert set(tokenize(cap)) <= vocab, cap


# ---- v2 data (issue 29): paraphrased captions, a held-out split, 64x64 frames, new backgrounds, distractors ----


def test_v2_vocabulary_is_the_shipped_one_and_covers_v1_and_both_splits():
    from lumina_rt.builtin import builtin_dir
    from lumina_rt.data.captions import split_words

    shipped = [w for w in (builtin_dir() / "text_vocab.txt").read_text().split("\n") if w]
    v2a = [w for w in (builtin_dir() / "v2a" / "text_vocab.txt").read_text().split("\n") if w]
    assert vocabulary("v2") == shipped and vocabulary() == vocabulary("v1") == v2a  # v1: the V2A model's words
    v2 = set(shipped)
    assert set(vocabulary("v1")) <= v2 and split_words("train") <= v2 and split_words("heldout") <= v2


def test_v2_heldout_words_templates_and_backgrounds_never_appear_in_training():
    from lumina_rt.data import captions as C

    function_words = {"a", "the", ","}
    training = C.split_words("train") | set(vocabulary("v1"))
    assert C.split_words("heldout") & training <= function_words
    assert not set(C.V2_VIDEO_TEMPLATES["heldout"]) & set(C.V2_VIDEO_TEMPLATES["train"])
    assert not set(C.V2_BACKGROUND_SPLITS["heldout"]) & set(C.V2_BACKGROUND_SPLITS["train"])
    ds = SyntheticDataset(3, caption_set="v2")
    heldout_only = C.split_words("heldout") - function_words
    for step in range(4):
        video, image = ds.video_batch(step, 16), ds.image_batch(step, 16)
        assert all(s.background in C.V2_BACKGROUND_SPLITS["train"] for s in video.specs + image.specs)
        for cap in video.captions + image.captions:
            assert not set(tokenize(cap)) & heldout_only, cap
    held = SyntheticDataset(3, caption_set="v2", split="heldout").video_batch(0, 16)
    assert all(s.background in C.V2_BACKGROUND_SPLITS["heldout"] for s in held.specs)
    assert all(
        set(tokenize(c)) <= C.split_words("heldout") | set(SYSTEM_PROMPTS["toon"].split()) for c in held.captions
    )


def test_v2_captions_paraphrase_every_attribute():
    from lumina_rt.data import captions as C

    caps = [C.video_caption_v2("red", "circle", "left", "quickly", "plain", k) for k in range(2000)]
    words = set(w for c in caps for w in tokenize(c))
    for table in (C.COLOUR_WORDS, C.SHAPE_WORDS, C.DIRECTION_WORDS, C.SPEED_WORDS):
        train = next(v[0] for k, v in table.items() if k in ("red", "circle", "left", "quickly"))
        assert set(train) <= words  # every training synonym is used
    assert len(set(caps)) > 100  # templates x synonyms x fillers
    assert C.word_concepts()["crimson"] == "red" and C.word_concepts()["west"] == "left"


def test_v2_clips_at_64px_are_measured_right_with_distractors_and_new_backgrounds():
    """Render known v2 clips (both splits, both sources, every background), analyse them: >= 99 % right."""
    import numpy as np

    from lumina_rt.data.synthetic import V2_ONLY_BACKGROUNDS, random_spec_v2

    rng = np.random.default_rng(7)
    right, n, backgrounds, with_distractors = 0, 0, set(), 0
    for i in range(96):
        colour, shape = list(COLOURS)[i % 6], SHAPES[i % 3]
        direction, speed = list(DIRECTIONS)[(i // 3) % 4], ("slowly", "steadily", "quickly")[(i // 12) % 3]
        spec = random_spec_v2(
            rng, ("toon", "grainy")[i % 2], colour, shape, direction, speed, 8, ("train", "heldout")[i % 4 == 0]
        )
        clip = render_clip(spec, 8, 64)
        assert clip.shape == (3, 8, 64, 64)
        a = analyse_frames(clip)
        right += a.colour == colour and a.direction == direction and speed_word(a.score) == speed
        n += 1
        backgrounds.add(spec.background)
        with_distractors += bool(spec.distractors)
    assert right / n >= 0.99
    assert set(V2_ONLY_BACKGROUNDS) <= backgrounds and 0 < with_distractors < n


def test_v2_rendering_is_smooth_and_size_independent():
    """Anti-aliased edges (intermediate values at the border) and the same picture at 32 and 64 px."""
    import numpy as np

    from lumina_rt.data.synthetic import random_spec_v2

    spec = random_spec_v2(np.random.default_rng(0), "toon", "red", "circle", "right", "slowly", 8, "heldout")
    big, small = render_clip(spec, 8, 64), render_clip(spec, 8, 32)
    down = torch.nn.functional.avg_pool2d(big.transpose(0, 1), 2).transpose(0, 1)
    assert (down - small).abs().mean() < 0.02
    red = big[0, 0] - big[1, 0]  # object redness: edge pixels take values between background and object
    assert ((red > 0.15) & (red < 0.6)).sum() >= 8


def test_v2_text_encoder_has_every_heldout_word_and_still_warns_on_unknown_ones(caplog):
    import logging

    from safetensors.torch import load_file

    from lumina_rt.builtin import builtin_dir
    from lumina_rt.components.tiny import TinyTextEncoder
    from lumina_rt.training.evaluate import eval_prompts

    shipped = load_file(str(builtin_dir() / "text_encoder.safetensors"))["embedding"]
    enc = TinyTextEncoder.create(dim=160, caption_set="v2")
    # v2: the shipped table (to float rounding: the QR differs in the last bits with the thread count)
    assert torch.allclose(enc.embedding, shipped, atol=1e-4)
    with caplog.at_level(logging.WARNING):
        enc.encode([p.prompt for p in eval_prompts("heldout")])
    assert not caplog.records  # every held-out word has a token
    with caplog.at_level(logging.WARNING):
        enc.encode(["a crimson zebra moving west"])
    assert "zebra" in caplog.text and "crimson" not in caplog.text
    e, i = enc.embedding, enc.index
    cos = torch.nn.functional.cosine_similarity
    assert cos(e[i["crimson"]], e[i["red"]], dim=0) > 0.9 and abs(cos(e[i["crimson"]], e[i["blue"]], dim=0)) < 0.1
    assert cos(e[i["west"]], e[i["left"]], dim=0) > 0.9 and cos(e[i["swiftly"]], e[i["quickly"]], dim=0) > 0.9


def test_v2_train_config_loads_and_keeps_v1_defaults():
    from pathlib import Path

    from lumina_rt.training.video import TrainConfig

    root = Path(__file__).resolve().parent.parent
    v2 = TrainConfig.load(root / "configs" / "builtin_v2.json")
    assert v2.data.caption_set == "v2" and v2.stages[-1].size == 64 and v2.latent.factor == 8
    assert v2.model.in_channels == v2.latent.channels and v2.model.cap_feat_dim >= len(vocabulary("v2"))
    shipped = TrainConfig.load(root / "configs" / "builtin.json")  # the shipped model: v2 captions at 32 px
    assert shipped.data.caption_set == "v2" and shipped.stages[-1].size == 32 and shipped.latent.factor == 4
    assert shipped.export == "lumina_rt/builtin"
    assert TrainConfig.load(root / "configs" / "builtin_v1.json").data.caption_set == "v1"
    from lumina_rt.errors import ConfigError

    with pytest.raises(ConfigError):
        TrainConfig.load({"data": {"caption_set": "v3"}})
