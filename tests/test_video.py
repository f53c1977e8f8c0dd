"""The one video writer (lumina_rt.video.write_video) and its upscale filters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from lumina_rt.errors import InputError
from lumina_rt.video import UPSCALE_FILTERS, read_video, to_uint8, write_video


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


# ------------------------------------------------------------------------------------------------ upscale filters
def _old_to_uint8(frames: torch.Tensor, scale: int) -> np.ndarray:
    """`to_uint8` as it was before the filters: the batch side by side, uint8 pixels repeated."""
    if frames.dim() == 5:
        frames = torch.cat(list(frames), dim=-1)
    if frames.shape[0] == 1:
        frames = frames.expand(3, -1, -1, -1)
    arr = (frames.float().clamp(0, 1).permute(1, 2, 3, 0).numpy() * 255.0).round().astype(np.uint8)
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
    return np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _smooth(h: int, w: int, scale: int = 1) -> torch.Tensor:
    """A smooth ramp [3, 2, h * scale, w * scale] sampled at the pixel centres of an image `scale` times larger (the
    analytic upscale of `_smooth(h, w)`): a smoothstep from left to right, a slow wave from top to bottom."""
    v = (torch.arange(h * scale, dtype=torch.float64) + 0.5) / (h * scale)
    u = (torch.arange(w * scale, dtype=torch.float64) + 0.5) / (w * scale)
    ramp = 0.1 + 0.8 * (3 * u**2 - 2 * u**3)
    img = ramp[None, :] * (0.85 + 0.15 * torch.cos(math.pi * v)[:, None])
    frames = torch.stack([img, 1 - img, 0.5 * img]).float()  # [3, H, W]
    return torch.stack([frames, frames.flip(-1)], dim=1)  # two frames


@pytest.mark.parametrize("shape", [(3, 2, 5, 7), (1, 3, 4, 4), (2, 3, 2, 3, 5)], ids=["rgb-odd", "grey", "batch"])
@pytest.mark.parametrize("scale", [1, 2, 3])
def test_nearest_is_the_exact_pixel_repeat_of_before(shape, scale):
    frames = torch.rand(shape) * 1.2 - 0.1  # some out of [0, 1]
    expected = _old_to_uint8(frames, scale)
    assert np.array_equal(to_uint8(frames, scale), expected)
    assert np.array_equal(to_uint8(frames, scale, "nearest"), expected)


@pytest.mark.parametrize("upscale", ["bilinear", "bicubic"])
def test_interpolation_keeps_a_constant_frame_constant(upscale):
    colour = torch.tensor([0.2, 0.55, 0.93])
    frames = colour[:, None, None, None].expand(3, 2, 6, 5)
    arr = to_uint8(frames, 3, upscale)
    assert arr.shape == (2, 18, 16, 3)  # 15 wide, padded to even
    assert np.array_equal(arr, np.broadcast_to((colour.numpy() * 255).round().astype(np.uint8), arr.shape))


def test_interpolation_is_closer_to_the_analytic_upscale_than_nearest():
    scale = 4
    small, truth = _smooth(12, 16), _smooth(12, 16, scale).permute(1, 2, 3, 0).numpy()  # truth: [F, H, W, 3]
    err = {f: np.abs(to_uint8(small, scale, f) / 255.0 - truth).mean() for f in UPSCALE_FILTERS}
    assert err["bicubic"] < 0.5 * err["nearest"], err
    assert err["bilinear"] < 0.5 * err["nearest"], err


def test_a_batch_is_upscaled_video_by_video():
    # Interpolation must not blend one video's right edge into the next one's left edge.
    a, b = torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4)
    arr = to_uint8(torch.stack([a, b]), 2, "bicubic")
    assert arr.shape == (1, 8, 16, 3)
    assert (arr[:, :, :8] == 0).all() and (arr[:, :, 8:] == 255).all()


def test_an_unknown_filter_is_refused_by_name(tmp_path):
    frames = torch.rand(3, 2, 4, 4)
    with pytest.raises(
        InputError, match=r"upscale filter 'lanczos' is not one of \['nearest', 'bilinear', 'bicubic'\]"
    ):
        to_uint8(frames, 2, "lanczos")
    with pytest.raises(InputError, match="'lanczos'"):
        write_video(frames, tmp_path / "v.gif", scale=2, upscale="lanczos")
    assert list(tmp_path.iterdir()) == []


def test_the_filter_reaches_the_file(tmp_path):
    frames = _smooth(8, 8)
    nearest = write_video(frames, tmp_path / "nearest.gif", scale=4)
    bicubic = write_video(frames, tmp_path / "bicubic.gif", scale=4, upscale="bicubic")
    a, b = read_video(nearest)[0], read_video(bicubic)[0]
    assert a.shape == b.shape == (3, 2, 32, 32)
    assert (a - b).abs().max() > 0.05
    # nearest keeps 4x4 blocks; bicubic does not
    assert torch.equal(a[..., ::4, ::4].repeat_interleave(4, -2).repeat_interleave(4, -1), a)
    assert not torch.equal(b[..., ::4, ::4].repeat_interleave(4, -2).repeat_interleave(4, -1), b)


def test_a_result_saves_with_its_filter_unless_told(tmp_path):
    from lumina_rt.pipeline import GenerationResult
    from lumina_rt.sampling import SampleConfig

    frames = _smooth(8, 8)[None]
    result = GenerationResult(frames, frames, SampleConfig(), seed=0, backend="torch", seconds=0.0, scale=2)
    assert result.upscale == "nearest"
    blocks = read_video(result.save(tmp_path / "a.gif"))[0]
    result.upscale = "bicubic"  # what Runtime.builtin's results carry (BUILTIN_UPSCALE)
    smooth = read_video(result.save(tmp_path / "b.gif"))[0]
    told = read_video(result.save(tmp_path / "c.gif", upscale="nearest"))[0]
    assert blocks.shape == smooth.shape == (3, 2, 16, 16)
    assert torch.equal(blocks, told) and not torch.equal(blocks, smooth)
    with pytest.raises(InputError, match=r"^upscale='area': choose one of \['nearest', 'bilinear', 'bicubic'\]$"):
        result.save(tmp_path / "d.gif", upscale="area")
    assert not (tmp_path / "d.gif").exists()
