"""The one video writer (lumina_rt.video.write_video)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lumina_rt.video import write_video


@pytest.mark.parametrize("fps", [4, 10, 8])
def test_gif_frame_duration_is_1000_over_fps_ms(tmp_path, fps):
    frames = torch.rand(3, 5, 8, 8)
    path = write_video(frames, tmp_path / "v.gif", fps=fps, scale=2)
    with Image.open(path) as im:
        assert im.n_frames == 5 and im.size == (16, 16)
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
    # GIF stores hundredths of a second: 1000 / 8 = 125 ms is written as 120 ms
    assert all(abs(d - 1000 / fps) < 10 for d in durations), durations
    if 1000 % (10 * fps) == 0:
        assert durations == [1000 // fps] * 5
