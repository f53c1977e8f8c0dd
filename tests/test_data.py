"""Synthetic multi-source data: rendering, sources, captions, hold-out, and motion measured from frames."""

from __future__ import annotations

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
