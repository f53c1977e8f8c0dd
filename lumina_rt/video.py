"""Video files: write frames as MP4 (libx264, yuv420p; with sound tracks: AAC) or GIF, read videos and their sound.

Encoding and decoding go through the ffmpeg that the imageio-ffmpeg wheel ships (no system ffmpeg or ffprobe
needed); what streams a file holds (kinds, sample rates) is read by PyAV (`media_streams`: ffmpeg's libraries, bundled
in its wheel), never parsed out of ffmpeg's log text:

- `write_video(frames, path, fps, scale, audio=None, sample_rate=None, upscale="nearest")`: the frames upscaled
  `scale` times with one of `UPSCALE_FILTERS` (nearest: pixels repeated, hard blocks; bilinear, bicubic:
  interpolated, smooth edges for smooth shapes), then one ffmpeg call encodes them (raw RGB on its stdin) and, with
  `audio`, muxes one AAC track per waveform, each padded with silence or trimmed to the video's duration. The file
  is written under a hidden temporary name beside `path` and renamed into place (`lumina_rt.files.atomic_path`): a
  failure leaves no partial file.
- `read_video(path)`: frames [3, F, H, W] in [0, 1] and the frame rate (MP4 / MOV / WebM / ... through ffmpeg, GIF
  through Pillow), with typed errors naming the file.
- `read_audio(path)`: a sound track decoded to float PCM, and its sample rate; `stream_durations(path)`: how long
  each stream lasts, counted from the decoded frames and samples.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from lumina_rt.errors import InputError, MediaError
from lumina_rt.files import atomic_path

logger = logging.getLogger(__name__)

SUFFIXES = (".mp4", ".gif")
AUDIO_SUFFIXES = (".mp4",)  # containers `write_video` muxes sound into
VIDEO_CRF = 25  # libx264 quality (what imageio-ffmpeg's default quality 5 gives)
AUDIO_CODEC = "aac"
AUDIO_BITRATE = "128k"
# Sample rates AAC codes (MPEG-4 sampling frequency indices); ffmpeg drops or resamples any other.
AAC_SAMPLE_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
FFMPEG_TIMEOUT_S = 600
# Filters that upscale saved videos (`to_uint8`): nearest repeats pixels (hard blocks); bilinear and bicubic
# interpolate (torch.nn.functional.interpolate, align_corners=False), smoother on anti-aliased shapes.
UPSCALE_FILTERS = ("nearest", "bilinear", "bicubic")


def to_uint8(frames: torch.Tensor, scale: int = 1, upscale: str = "nearest") -> np.ndarray:
    """[3, F, H, W] or [B, 3, F, H, W] in [0, 1] -> [F, H', W', 3] uint8 (a batch side by side, even sizes for MP4),
    each video upscaled `scale` times with the filter `upscale` (one of `UPSCALE_FILTERS`)."""
    if upscale not in UPSCALE_FILTERS:
        raise InputError(f"upscale filter {upscale!r} is not one of {list(UPSCALE_FILTERS)}")
    if frames.dim() not in (4, 5) or frames.shape[-4] not in (1, 3):
        raise InputError(f"frames must be [3, F, H, W] or [B, 3, F, H, W], got shape {tuple(frames.shape)}")
    videos = list(frames) if frames.dim() == 5 else [frames]
    arr = np.concatenate([_pixels(v, scale, upscale) for v in videos], axis=2)  # B videos left to right
    pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return arr


def _pixels(video: torch.Tensor, scale: int, upscale: str) -> np.ndarray:
    """One video [C, F, H, W] (C = 1 grey or 3) -> [F, H * scale, W * scale, 3] uint8. Nearest repeats the uint8
    pixels; bilinear and bicubic interpolate the float frames (edges clamped, the result clamped to [0, 1])."""
    x = video.detach().float().clamp(0, 1).expand(3, -1, -1, -1)
    if scale > 1 and upscale != "nearest":
        x = torch.nn.functional.interpolate(
            x.transpose(0, 1), scale_factor=scale, mode=upscale, align_corners=False
        ).transpose(0, 1)
        x = x.clamp(0, 1)  # bicubic overshoots at edges
    arr = (x.permute(1, 2, 3, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    if scale > 1 and upscale == "nearest":
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    return arr


def latent_preview(latents: torch.Tensor) -> torch.Tensor:
    """Latents [B, C, f, h, w] shown as frames: the first three channels (or one, as grey) scaled to [0, 1]."""
    x = latents[:, :3].float()
    lo = x.amin(dim=(2, 3, 4), keepdim=True)
    hi = x.amax(dim=(2, 3, 4), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6)


# ---------------------------------------------------------------------------------------------------- ffmpeg
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary imageio-ffmpeg ships; MediaError when it is not installed."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise MediaError(f"no ffmpeg: the imageio-ffmpeg package is missing or has no binary ({exc})") from None


def run_ffmpeg(args: Sequence[str], what: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run ffmpeg with `args`; MediaError naming `what` (and ffmpeg's last message) when it fails."""
    cmd = [ffmpeg_exe(), "-hide_banner", *args]
    try:
        res = subprocess.run(
            cmd,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=FFMPEG_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise MediaError(f"ffmpeg took more than {FFMPEG_TIMEOUT_S} s to {what}") from None
    if res.returncode != 0:
        tail = res.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise MediaError(f"ffmpeg could not {what} (exit code {res.returncode}): {' | '.join(tail)}")
    return res


def frame_rate(fps: float) -> Fraction:
    """`fps` as an exact fraction (24000/1001 stays exact); InputError unless it is a positive finite number."""
    if not isinstance(fps, (int, float, Fraction)) or not math.isfinite(fps) or fps <= 0:
        raise InputError(f"fps must be a positive number, got {fps!r}")
    return Fraction(fps).limit_denominator(100_000)


def audio_length(frames: int, fps: float, sample_rate: int) -> int:
    """Samples of sound that last as long as `frames` video frames at `fps`: floor(frames * sample_rate / fps)."""
    return math.floor(Fraction(int(frames) * int(sample_rate)) / frame_rate(fps))


def fit_audio(waveform: torch.Tensor | np.ndarray, samples: int) -> np.ndarray:
    """Waveform(s) [S] or [T, S] trimmed, or padded with silence, to `samples` samples (float32, same rank)."""
    arr = np.asarray(waveform.detach().float().cpu() if isinstance(waveform, torch.Tensor) else waveform, np.float32)
    have = arr.shape[-1]
    if have >= samples:
        return np.ascontiguousarray(arr[..., :samples])
    pad = [(0, 0)] * (arr.ndim - 1) + [(0, samples - have)]
    return np.pad(arr, pad)


def audio_tracks(audio: torch.Tensor | np.ndarray, sample_rate: int | None, path: Path) -> np.ndarray:
    """Checked sound tracks [T, S] float32 from a waveform [S] or tracks [T, S] in [-1, 1]."""
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise InputError(f"audio for {str(path)!r} needs a positive integer sample_rate, got {sample_rate!r}")
    if sample_rate not in AAC_SAMPLE_RATES:
        raise InputError(
            f"audio for {str(path)!r} has sample rate {sample_rate} Hz, which AAC cannot hold; use one of "
            f"{AAC_SAMPLE_RATES} (resample it first)"
        )
    arr = np.asarray(audio.detach().float().cpu() if isinstance(audio, torch.Tensor) else audio, np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(
            f"audio for {str(path)!r} must be a waveform [samples] or tracks [T, samples], got shape "
            f"{tuple(np.shape(audio))}"
        )
    if not np.isfinite(arr).all():
        raise InputError(f"audio for {str(path)!r} holds NaN or infinite samples")
    return arr


def write_wav(path: str | os.PathLike, waveform: np.ndarray, sample_rate: int) -> Path:
    """Mono 16-bit PCM WAV of a float waveform [S] (clipped to [-1, 1])."""
    pcm = (np.clip(np.asarray(waveform, np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return Path(path)


def encode_mp4(
    arr: np.ndarray, fps: float, out: Path, tracks: np.ndarray | None = None, sample_rate: int | None = None
) -> None:
    """Frames [F, H, W, 3] uint8 to an H.264 MP4 at `out`, with one AAC track per row of `tracks` [T, S] (already
    fitted to the video's duration): one ffmpeg call, frames on its stdin."""
    n, h, w, _ = arr.shape
    rate = str(frame_rate(fps))
    cmd = ["-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", rate]
    cmd += ["-i", "pipe:0"]
    with tempfile.TemporaryDirectory(prefix="lumina-rt-audio-") as work:
        maps = ["-map", "0:v:0"]
        for i, track in enumerate([] if tracks is None else tracks):
            cmd += ["-i", str(write_wav(Path(work) / f"track{i}.wav", track, int(sample_rate or 0)))]
            maps += ["-map", f"{i + 1}:a:0"]
        cmd += maps + ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(VIDEO_CRF)]
        if tracks is not None:
            cmd += ["-c:a", AUDIO_CODEC, "-b:a", AUDIO_BITRATE]
        cmd += ["-movflags", "+faststart", "-f", "mp4", str(out)]
        what = f"encode {n} frames of {w}x{h}" + (f" with {len(tracks)} sound track(s)" if tracks is not None else "")
        run_ffmpeg(cmd, what, stdin=arr.tobytes())
    if tracks is not None:
        check_tracks(out, len(tracks), int(sample_rate or 0))


def check_tracks(path: Path, count: int, sample_rate: int) -> None:
    """MediaError unless `path` holds `count` sound tracks at `sample_rate` (ffmpeg can drop one with a warning)."""
    rates = [s.sample_rate for s in media_streams(path) or [] if s.kind == "audio"]
    if rates != [sample_rate] * count:
        raise MediaError(f"ffmpeg wrote sound tracks at {rates} Hz into {str(path)!r}, not {count} at {sample_rate} Hz")


def write_video(
    frames: torch.Tensor,
    path: str | os.PathLike,
    fps: float = 8,
    scale: int = 1,
    audio: torch.Tensor | np.ndarray | None = None,
    sample_rate: int | None = None,
    upscale: str = "nearest",
) -> Path:
    """Write frames (see `to_uint8`; upscaled `scale` times with the filter `upscale`) to `path` (.mp4 or .gif)
    atomically; returns the path.

    `audio`: a waveform [samples] or one per track [T, samples] (floats in [-1, 1]) at `sample_rate`, muxed as AAC
    (MP4 only), each padded with silence or trimmed to the video's duration (frames / fps).
    """
    import imageio.v2 as imageio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"video path {str(path)!r} must end in one of {SUFFIXES}")
    rate = frame_rate(fps)
    tracks = None
    if audio is not None:
        if suffix not in AUDIO_SUFFIXES:
            raise InputError(
                f"video path {str(path)!r} cannot hold sound ({suffix} has no audio track); write one of "
                f"{AUDIO_SUFFIXES} to keep the audio"
            )
        tracks = audio_tracks(audio, sample_rate, path)
    arr = to_uint8(frames, scale, upscale)
    if tracks is not None:
        tracks = fit_audio(tracks, audio_length(arr.shape[0], rate, int(sample_rate or 0)))
    with atomic_path(path, keep_suffix=True) as tmp:
        if suffix == ".gif":
            imageio.mimsave(tmp, list(arr), duration=gif_durations(arr.shape[0], rate), loop=0)
        else:
            encode_mp4(arr, rate, tmp, tracks, sample_rate)
    return path


def mux_audio(
    source: str | os.PathLike,
    path: str | os.PathLike,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int,
    frames: int,
    fps: float,
) -> Path:
    """Copy the video stream of `source` (`frames` frames at `fps`, not re-encoded) into an MP4 at `path` with
    `audio` (a waveform [S] or tracks [T, S], fitted to frames / fps) as AAC, atomically; any sound `source` had is
    dropped. MediaError when ffmpeg cannot (e.g. a codec MP4 does not hold: re-encode with `write_video`)."""
    path = Path(path)
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        raise InputError(f"output path {str(path)!r} must end in one of {AUDIO_SUFFIXES} to hold sound")
    tracks = fit_audio(audio_tracks(audio, sample_rate, path), audio_length(frames, fps, sample_rate))
    with atomic_path(path, keep_suffix=True) as tmp, tempfile.TemporaryDirectory(prefix="lumina-rt-audio-") as work:
        cmd = ["-y", "-loglevel", "error", "-i", str(source)]
        maps = ["-map", "0:v:0"]
        for i, track in enumerate(tracks):
            cmd += ["-i", str(write_wav(Path(work) / f"track{i}.wav", track, sample_rate))]
            maps += ["-map", f"{i + 1}:a:0"]
        cmd += maps + ["-c:v", "copy", "-c:a", AUDIO_CODEC, "-b:a", AUDIO_BITRATE, "-movflags", "+faststart"]
        run_ffmpeg(
            [*cmd, "-f", "mp4", str(tmp)], f"copy the video of {str(source)!r} with {len(tracks)} sound track(s)"
        )
        check_tracks(tmp, len(tracks), sample_rate)
    return path


# ---------------------------------------------------------------------------------------------------- reading
def check_readable(path: str | os.PathLike, what: str = "video") -> Path:
    """`path` as a Path; InputError naming it when it does not exist, is not a file or cannot be opened."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} file {str(p)!r} does not exist")
    if not p.is_file():
        raise InputError(f"{what} path {str(p)!r} is not a file")
    try:
        with open(p, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise InputError(f"{what} file {str(p)!r} cannot be read: {exc.strerror or exc}") from None
    return p


@dataclass(frozen=True)
class ReadLimits:
    """What `read_video` reads at most: seconds of video and pixels (width x height x frames, so that a clip of
    a few seconds cannot fill the memory at a huge size); `accepts` ends the error message (what is accepted)."""

    max_seconds: float | None = None
    max_pixels: int | None = None
    accepts: str = ""

    def check(self, p: Path, count: int, fps: float, shape: tuple[int, ...]) -> None:
        """InputError naming the file once `count` frames of `shape` at `fps` pass a limit."""
        tail = f": {self.accepts}" if self.accepts else ""
        if self.max_seconds is not None and count > self.max_seconds * fps + 1e-9:
            raise InputError(
                f"video {str(p)!r} is longer than {self.max_seconds:g} s (at {fps:g} fps, more than "
                f"{math.floor(self.max_seconds * fps + 1e-9)} frames), the most that is accepted{tail}"
            )
        if self.max_pixels is not None and count * shape[0] * shape[1] > self.max_pixels:
            raise InputError(
                f"video {str(p)!r} is too large: {count} frames of {shape[1]}x{shape[0]} read so far, more than "
                f"{self.max_pixels / 1e6:g} M pixels in all (width x height x frames); scale it down first{tail}"
            )


def gif_durations(frames: int, fps: float) -> list[int]:
    """Per-frame GIF delays in ms. GIF counts in 10 ms units, so 1000 / fps is rounded where the frame's end time
    is, as encoders do: at 8 fps, 130 and 120 ms alternate (125 ms on average; the video lasts frames / fps)."""
    ends = [math.floor((i + 1) * 100.0 / float(fps) + 0.5) * 10 for i in range(frames)]
    return [max(10, end - start) for start, end in zip([0, *ends[:-1]], ends)]


def _read_gif(p: Path, limits: ReadLimits) -> tuple[list[np.ndarray], float]:
    from PIL import Image, ImageSequence

    out, durations = [], []
    with Image.open(p) as im:
        for frame in ImageSequence.Iterator(im):
            durations.append(float(frame.info.get("duration") or im.info.get("duration") or 100))
            out.append(np.asarray(frame.convert("RGB")))
            limits.check(p, len(out), 1000.0 / float(np.mean(durations)), out[-1].shape)
    return out, 1000.0 / float(np.mean(durations)) if durations else 0.0  # 130/120 ms alternating: 8 fps


def _read_ffmpeg(p: Path, limits: ReadLimits) -> tuple[list[np.ndarray], float]:
    import imageio.v2 as imageio

    out = []
    with imageio.get_reader(str(p), format="FFMPEG") as reader:
        fps = float(reader.get_meta_data().get("fps") or 0.0)
        if not math.isfinite(fps) or fps <= 0:
            raise InputError(f"video {str(p)!r} has no usable frame rate (ffmpeg reports {fps!r} fps)")
        for frame in reader:
            out.append(np.asarray(frame)[..., :3])
            limits.check(p, len(out), fps, out[-1].shape)
    return out, fps


def read_video(
    path: str | os.PathLike,
    max_seconds: float | None = None,
    accepts: str = "",
    max_pixels: int | None = None,
) -> tuple[torch.Tensor, float]:
    """(frames [3, F, H, W] float32 in [0, 1], frames per second) of a video file (MP4 and anything ffmpeg reads;
    GIF through Pillow). InputError naming the file when it is missing, unreadable, not a video, has no frames or
    passes a limit: longer than `max_seconds`, more than `max_pixels` pixels in all (width x height x frames); the
    message then ends with `accepts`, what is accepted. Reading stops at the first frame past a limit."""
    limits = ReadLimits(max_seconds, max_pixels, accepts)
    p = check_readable(path)
    try:
        reader = _read_gif if p.suffix.lower() == ".gif" else _read_ffmpeg
        arrays, fps = reader(p, limits)
    except InputError:
        raise
    except Exception as exc:  # imageio / Pillow / ffmpeg raise OSError, RuntimeError, ValueError, IndexError ...
        streams = media_streams(p)
        if streams is not None and not any(s.kind == "video" for s in streams):
            raise InputError(f"{str(p)!r} has no video stream (ffmpeg finds only: {_kinds(streams)})") from None
        detail = str(exc).strip().splitlines()
        raise InputError(f"{str(p)!r} is not a readable video: {detail[0] if detail else type(exc).__name__}") from None
    if not arrays:
        raise InputError(f"video {str(p)!r} has no frames")
    if len({a.shape for a in arrays}) != 1:
        raise InputError(f"video {str(p)!r} changes frame size mid-stream; re-encode it at one size")
    frames = torch.from_numpy(np.stack(arrays)).permute(3, 0, 1, 2).float().div_(255.0)
    return frames.contiguous(), fps


@dataclass(frozen=True)
class Stream:
    """One stream of a media file: its kind ("video", "audio", "subtitle", "data", ...) and, for sound, its sample
    rate in Hz."""

    kind: str
    sample_rate: int | None = None


def media_streams(path: str | os.PathLike) -> list[Stream] | None:
    """The streams of a media file in the container's order (PyAV opens it with ffmpeg's demuxers; no decoding), or
    None when it cannot be opened as a media file."""
    import av

    try:
        with av.open(str(path)) as container:
            return [
                Stream(s.type, int(s.sample_rate) if s.type == "audio" and s.sample_rate else None)
                for s in container.streams
            ]
    except (av.FFmpegError, OSError, ValueError):
        return None


def _kinds(streams: list[Stream]) -> str:
    return ", ".join(s.kind.capitalize() for s in streams) or "no streams"


def sound_tracks(path: str | os.PathLike) -> int:
    """How many sound tracks a media file has (0 also when it cannot be opened)."""
    return sum(s.kind == "audio" for s in media_streams(check_readable(path, "media")) or [])


def read_audio(path: str | os.PathLike, track: int = 0) -> tuple[torch.Tensor, int]:
    """(waveform float32 [samples] in [-1, 1], sample rate) of sound track `track` of a file, decoded by ffmpeg
    (channels mixed to mono). InputError naming the file when it is missing, unreadable or has no such track."""
    p = check_readable(path, "media")
    streams = media_streams(p)
    if streams is None:
        raise InputError(f"{str(p)!r} is not a readable media file (ffmpeg cannot open it)")
    rates = [s.sample_rate for s in streams if s.kind == "audio"]
    if not 0 <= track < len(rates):
        raise InputError(f"{str(p)!r} has {len(rates)} sound track(s) ({_kinds(streams)}); there is no track {track}")
    cmd = ["-i", str(p), "-map", f"0:a:{int(track)}", "-vn", "-ac", "1", "-f", "f32le", "-acodec", "pcm_f32le"]
    res = run_ffmpeg([*cmd, "-loglevel", "error", "pipe:1"], f"decode sound track {track} of {str(p)!r}")
    rate = rates[track]
    if not rate:
        raise InputError(f"sound track {track} of {str(p)!r} has no sample rate")
    return torch.from_numpy(np.frombuffer(res.stdout, dtype="<f4").copy()), rate


def stream_durations(path: str | os.PathLike) -> dict[str, float]:
    """Seconds each stream of a file lasts, from decoded data: {"video": frames / fps, "audio": samples / rate}
    (only the streams the file has; the first sound track)."""
    frames, fps = read_video(path)
    out = {"video": frames.shape[1] / fps}
    if sound_tracks(path):
        waveform, rate = read_audio(path)
        out["audio"] = waveform.numel() / rate
    return out
