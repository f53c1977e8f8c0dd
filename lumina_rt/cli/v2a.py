"""`lumina-rt v2a VIDEO --out OUT.mp4`: add sound made by a V2A model to an existing video.

The sound model: the built-in one's engines (built on first use, as for `lumina-rt generate --builtin`), the V2A
engine of `--engine-dir`, or with `--reference` the built-in V2A model's reference torch model.

The video is read (its frame rate from the file), checked against what the sound model serves, resampled to the
model's frame rate for the model only, and OUT gets the original video stream (copied, not re-encoded; a GIF or a
codec MP4 cannot hold is re-encoded) with the new sound track. Every check runs before any work, and OUT is written
atomically: after an error it does not exist (or keeps its old content).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from lumina_rt.cli.common import Runner

logger = logging.getLogger("lumina_rt.cli.v2a")

# The most video this command decodes, in pixels (width x height x frames; 1.6 GB as float32 frames): e.g. 2 s of
# 1920x1080 at 30 fps. The sound model sees every clip at its own small size; a larger video is refused, not read.
MAX_PIXELS = 2**27


def add(p: argparse.ArgumentParser) -> Runner:
    from lumina_rt.engines.v2a_engine import V2A_BACKENDS

    p.add_argument("video", help="the video to add sound to (MP4, GIF, or anything ffmpeg reads)")
    p.add_argument("--out", required=True, help="output .mp4 (not the input file)")
    p.add_argument("--prompt", default=None, help="text describing the sound (default: none, the video alone)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--steps", type=int, default=None, help="sampling grid points (default: the model's)")
    p.add_argument(
        "--engine-dir",
        default=None,
        help="engine directory with a V2A engine (`lumina-rt build --v2a`); default: the built-in model's engines",
    )
    p.add_argument(
        "--reference", action="store_true", help="the built-in V2A model's reference torch model (no engines)"
    )
    p.add_argument("--backend", default="auto", choices=["auto", *V2A_BACKENDS], help="engine backend of the V2A model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return run


def check_paths(video: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, Path]:
    """(video, out) once the video is a readable file and out an .mp4 that is not the video; InputError naming the
    bad one otherwise."""
    from lumina_rt.errors import InputError
    from lumina_rt.video import AUDIO_SUFFIXES, check_readable

    src, dst = check_readable(video), Path(out)
    if dst.suffix.lower() not in AUDIO_SUFFIXES:
        raise InputError(f"--out {str(dst)!r} must end in one of {AUDIO_SUFFIXES} (a file that can hold sound)")
    same = dst.resolve() == src.resolve() or (dst.exists() and os.path.samefile(dst, src))
    if same:
        raise InputError(f"--out {str(dst)!r} is the input video {str(src)!r}; write the result to another file")
    if dst.is_dir():
        raise InputError(f"--out {str(dst)!r} is a directory; give a file name ending in .mp4")
    return src, dst


def run(args: argparse.Namespace) -> int:
    from lumina_rt.errors import InputError, MediaError
    from lumina_rt.v2a.soundtrack import load_soundtrack
    from lumina_rt.video import mux_audio, read_video, write_video

    if args.reference and args.engine_dir is not None:
        raise InputError("give --engine-dir or --reference, not both")
    src, dst = check_paths(args.video, args.out)
    stage = load_soundtrack(args.engine_dir, args.backend, args.reference, args.steps)
    accepts = f"the sound model accepts {stage.accepts()}; this command reads at most {MAX_PIXELS / 1e6:g} M pixels"
    frames, fps = read_video(src, max_seconds=stage.max_seconds, accepts=accepts, max_pixels=MAX_PIXELS)
    count = int(frames.shape[1])
    t0 = time.perf_counter()
    wave = stage(frames, fps, args.prompt, seed=args.seed, progress=not args.no_progress, what=f"video {str(src)!r}")
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    copied = src.suffix.lower() != ".gif"  # a GIF's frames cannot go into an MP4 as they are
    if copied:
        try:
            mux_audio(src, dst, wave, stage.sample_rate, count, fps)
        except MediaError as exc:  # a codec MP4 does not hold
            logger.info("re-encoding the video of %s: %s", src, exc)
            copied = False
    if not copied:
        write_video(frames, dst, fps=fps, audio=wave, sample_rate=stage.sample_rate)
    how = "video stream copied" if copied else "video re-encoded"
    print(
        f"wrote {dst} ({count} frames at {fps:g} fps, {how}; {wave.numel()} samples of sound at {stage.sample_rate} Hz "
        f"made in {seconds:.1f} s, muxed in {time.perf_counter() - t1:.2f} s)"
    )
    return 0
