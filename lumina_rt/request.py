"""One validated description of a generation request, for the CLI, the Python API and the HTTP server.

Public API:

- `GenerationRequest`: the request (prompts, negative prompt, sizes, fps, steps, preset / schedule, cfg, motion,
  seed, cache, audio, output scale and upscale filter, output path), checked field by field when it is made;
- `GenerationRequest.from_cli(args)`: from `lumina-rt generate`'s parsed flags (errors name `--frames`, ...);
- `GenerationRequest.from_python(**keywords)`: from `Pipeline.generate` / `Runtime.generate` keywords
  (errors name `frames=`, ...);
- `GenerationRequest.from_http(body)`: from a JSON body (errors name the field `frames`, ...; unknown fields refused);
- `request.check(pipeline)`: against the engine set's served shapes and recipes, before any work; returns the
  `SampleConfig` and the (frames, height, width) the request runs;
- `request.check_caption(tokens, pipeline)`: the caption length against the served range, after encoding;
- `request.said(field, value)`: how the caller wrote a field (`--frames 0`, `frames=0`, `"frames": 0`);
- `check_output_path(path, said)`: refuse an output whose folder is missing or read-only (never create it);
- `load_caption_features(path, said)` / `check_caption_features(path, said)`: a safetensors file of caption
  features, or InputError naming it;
- the bounds (`SEED_MAX`, `STEPS_MAX`, `CFG_MAX`, `MOTION_MAX`, `FPS_MAX`, `SCALE_MAX`) and `RULES`, the table
  docs/requests.md shows.

Every error is typed (`InputError`, `ScheduleError`, `EngineError`), one line, and names the field as the caller
wrote it, the bad value and what is accepted. The messages are the contract: tests compare them across the three
front doors.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lumina_rt.errors import EngineError, InputError, ScheduleError
from lumina_rt.video import UPSCALE_FILTERS

if TYPE_CHECKING:
    from lumina_rt.sampling import SampleConfig

SEED_MAX = 2**63 - 1
STEPS_MAX = 1000
CFG_MAX = 100.0
MOTION_MAX = 100.0
FPS_MAX = 240.0
SCALE_MAX = 32
CACHE_LEVELS = ("off", "safe", "fast", "safe+cfg")
VIDEO_SUFFIXES = (".mp4", ".gif")

SOURCES = ("cli", "python", "http")

# field -> (CLI flag, Python keyword, HTTP field)
NAMES: dict[str, tuple[str, str, str]] = {
    "prompts": ("--prompt", "prompt", "prompt"),
    "negative_prompt": ("--negative-prompt", "negative_prompt", "negative_prompt"),
    "unconditional": ("--unconditional", "unconditional", "unconditional"),
    "caption_features": ("--caption-features", "cap_feats", "caption_features"),
    "frames": ("--frames", "frames", "frames"),
    "height": ("--height", "height", "height"),
    "width": ("--width", "width", "width"),
    "fps": ("--fps", "fps", "fps"),
    "steps": ("--steps", "steps", "steps"),
    "preset": ("--preset", "preset", "preset"),
    "schedule": ("--schedule", "schedule", "schedule"),
    "cfg": ("--cfg", "cfg", "cfg"),
    "motion": ("--motion", "motion", "motion"),
    "neg_motion": ("--neg-motion", "neg_motion", "neg_motion"),
    "seed": ("--seed", "seed", "seed"),
    "cache": ("--cache", "cache", "cache"),
    "audio": ("--audio", "audio", "audio"),
    "audio_steps": ("--audio-steps", "audio_steps", "audio_steps"),
    "scale": ("--scale", "scale", "scale"),
    "upscale": ("--upscale", "upscale", "upscale"),
    "out": ("--out", "path", "out"),
}

# (rule, error, accepted) — the table of docs/requests.md
RULES: tuple[tuple[str, str, str], ...] = (
    ("prompt", "InputError", "at least one prompt with a non-blank word; no prompt only with --unconditional"),
    ("caption features", "InputError", "an existing safetensors file with a cap_feats tensor, instead of a prompt"),
    ("frames, height, width", "InputError", "whole numbers >= 1 that the engines serve (default: the served size)"),
    ("fps", "InputError", f"a number > 0 and <= {FPS_MAX:g}"),
    ("steps", "ScheduleError", f"a whole number of time-grid points, 2 .. {STEPS_MAX}"),
    ("cfg", "ScheduleError", f"finite, 0 .. {CFG_MAX:g} (0: no guidance), a number or time-aware JSON"),
    ("motion, neg_motion", "ScheduleError", f"finite, -{MOTION_MAX:g} .. {MOTION_MAX:g} (negative: no motion score)"),
    ("seed", "InputError", f"a whole number 0 .. 2**63-1 ({SEED_MAX})"),
    ("cache", "ScheduleError", "off, safe, fast, safe+cfg, or a finite threshold >= 0"),
    ("audio steps", "InputError", f"with audio only; a whole number 2 .. {STEPS_MAX}"),
    ("scale", "InputError", f"a whole number 1 .. {SCALE_MAX} (how many times larger the saved video is)"),
    ("upscale", "InputError", f"one of {', '.join(UPSCALE_FILTERS)} (the filter that upscales it)"),
    ("output path", "InputError", ".mp4 or .gif (.mp4 with audio) in an existing, writable folder; not read-only"),
    ("caption length", "EngineError", "at most the engines' caption tokens (shorten the prompt)"),
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(value: Any) -> list[Any]:
    """The values of a time-aware setting (a number, or [default, [t0, v0], ...])."""
    if isinstance(value, (list, tuple)) and value:
        out = [value[0]]
        for entry in value[1:]:
            out.append(entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else entry)
        return out
    return [value]


def _writable(path: Path) -> bool:
    """Writable by this process, and not marked read-only (no write bit: refused even for root, who may write)."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def check_output_path(path: str | os.PathLike, said: str, audio: str | None = None) -> Path:
    """An output video path the writer may replace: .mp4 / .gif (.mp4 with `audio`, how the caller asked for
    sound, e.g. "--audio"), in an existing writable folder, and not a read-only file or a folder. Never creates
    anything."""
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(f"{said}: the output must end in .mp4 or .gif")
    if audio and suffix != ".mp4":
        raise InputError(f"{said}: {audio} needs an .mp4 (a GIF has no sound track)")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{said}: the folder {str(folder)!r} does not exist (create it first)")
    if not _writable(folder):
        raise InputError(f"{said}: the folder {str(folder)!r} is read-only")
    if out.is_dir():
        raise InputError(f"{said}: is a folder, not a video file")
    if out.exists() and not _writable(out):
        raise InputError(f"{said}: the file exists and is read-only (it is not replaced)")
    return out


def check_caption_features(path: str | os.PathLike, said: str) -> None:
    """InputError naming a caption-features file that is missing, not safetensors, or has no cap_feats tensor
    (reads only the file's header)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{said}: no such file")
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            names = sorted(f.keys())
    except Exception as exc:  # safetensors raises its own error types for every malformed file
        raise InputError(f"{said}: not a safetensors file ({type(exc).__name__})") from None
    if "cap_feats" not in names:
        raise InputError(f"{said}: has no 'cap_feats' tensor (it has {names})")


def load_caption_features(path: str | os.PathLike, said: str) -> dict[str, Any]:
    """The tensors of a caption-features file (cap_feats [B, L, D], optional cap_mask, neg_cap_feats,
    neg_cap_mask); InputError naming the file when it is missing, not safetensors, or has no cap_feats."""
    check_caption_features(path, said)
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # a header that reads but tensors that do not (truncated file)
        raise InputError(f"{said}: not a safetensors file ({type(exc).__name__})") from None


@dataclass
class GenerationRequest:
    """A generation request, validated field by field when made (see the module docstring). `source` says which
    front door made it ("cli", "python", "http"), and so how its errors spell the fields."""

    prompts: list[str] | None = None
    negative_prompt: str | list[str] = ""
    unconditional: bool = False
    caption_features: str | None = None  # a safetensors file (CLI / HTTP); Python passes tensors to generate
    has_features: bool = False  # caption features come with the request (file or tensors): no prompt needed
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: float = 8
    steps: int | None = None
    preset: str | dict[str, Any] | None = None
    schedule: Any = None
    cfg: Any = None
    motion: Any = None
    neg_motion: Any = None
    seed: int = 0
    cache: str | float | None = None
    audio: bool = False
    audio_steps: int | None = None
    scale: int | None = None
    upscale: str | None = None
    out: str | None = None
    source: str = "python"
    _given: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_cli(cls, args: Any) -> GenerationRequest:
        """From `lumina-rt generate`'s parsed flags (an argparse.Namespace; see lumina_rt/cli/generate.py)."""

        def time_aware(text: str | None) -> Any:
            if text is None:
                return None
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text

        raw = {name: getattr(args, name) for name in ("cfg", "motion", "neg_motion", "schedule")}
        req = cls(
            prompts=args.prompt,
            negative_prompt=args.negative_prompt,
            unconditional=bool(getattr(args, "unconditional", False)),
            caption_features=args.caption_features,
            has_features=args.caption_features is not None,
            frames=args.frames,
            height=args.height,
            width=args.width,
            fps=args.fps,
            steps=args.steps,
            preset=args.preset,
            schedule=time_aware(args.schedule),
            cfg=time_aware(args.cfg),
            motion=time_aware(args.motion),
            neg_motion=time_aware(args.neg_motion),
            seed=args.seed,
            cache=args.cache,
            audio=bool(args.audio),
            audio_steps=args.audio_steps,
            scale=args.scale,
            upscale=args.upscale,
            out=args.out,
            source="cli",
            _given={k: v for k, v in raw.items() if v is not None},
        )
        return req

    @classmethod
    def from_python(cls, prompt: str | Sequence[str] | None = None, **keywords: Any) -> GenerationRequest:
        """From `generate` keywords (`prompt`, `negative_prompt`, `unconditional`, `frames`, ..., `seed`, `cache`,
        `audio`, `audio_steps`) and `save`'s (`scale`, `upscale`, `path`); `has_features=True` when caption features
        replace the prompt."""
        if "path" in keywords:
            keywords["out"] = keywords.pop("path")
        unknown = sorted(set(keywords) - {f.name for f in fields(cls)} - {"_given"})
        if unknown:
            raise TypeError(f"unknown request keywords {unknown}")
        if isinstance(prompt, str):
            prompts: Any = [prompt]
        elif prompt is None:
            prompts = None
        else:
            prompts = list(prompt) if isinstance(prompt, Sequence) else prompt
        if prompts is not None and not isinstance(prompts, list):
            raise InputError(f"prompt={prompt!r}: a prompt must be a string or a list of strings")
        return cls(prompts=prompts, source="python", **keywords)

    @classmethod
    def from_http(cls, body: Mapping[str, Any]) -> GenerationRequest:
        """From a JSON request body: the fields of `NAMES` (HTTP spelling); `prompt` is a string or a list of
        strings; unknown fields are refused."""
        if not isinstance(body, Mapping):
            raise InputError(f"the request body must be a JSON object, got {type(body).__name__}")
        by_http = {names[2]: name for name, names in NAMES.items()}
        unknown = sorted(set(body) - set(by_http))
        if unknown:
            raise InputError(f"unknown fields {unknown}; accepted: {sorted(by_http)}")
        values = {by_http[k]: v for k, v in body.items()}
        prompt = values.pop("prompts", None)
        if isinstance(prompt, str):
            prompt = [prompt]
        if prompt is not None and not isinstance(prompt, list):
            raise InputError(f'"prompt": {json.dumps(prompt)}: a prompt must be a string or a list of strings')
        if values.get("caption_features") is not None:
            values["has_features"] = True
        return cls(prompts=prompt, source="http", **values)

    # ------------------------------------------------------------------ names in the caller's words
    def name(self, name: str) -> str:
        """The field as the caller names it: `--frames`, `frames`, `frames`."""
        return NAMES[name][SOURCES.index(self.source)]

    def said(self, name: str, value: Any = ...) -> str:
        """The field and value as the caller wrote them: `--frames 0`, `frames=0`, `"frames": 0`."""
        if value is ...:
            value = self._given.get(name, getattr(self, name))
        label = self.name(name)
        if self.source == "cli":
            if value is True:
                return label
            if isinstance(value, (list, tuple, dict)):
                value = json.dumps(value)
            text = value if isinstance(value, str) else _num(value)
            return f"{label} {shlex.quote(text)}"
        if self.source == "python":
            return f"{label}={value!r}" if not isinstance(value, float) else f"{label}={_num(value)}"
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = repr(value)
        return f'"{label}": {text}'

    # ------------------------------------------------------------------ field rules
    def validate(self) -> None:
        """The rules that need no engines (RULES); raises the first broken one."""
        self._prompts()
        for name in ("frames", "height", "width"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise InputError(f"{self.said(name)}: must be a whole number >= 1")
        if not _is_number(self.fps) or not math.isfinite(self.fps) or not 0 < self.fps <= FPS_MAX:
            raise InputError(f"{self.said('fps')}: must be a number > 0 and <= {FPS_MAX:g}")
        if self.steps is not None and (not _is_int(self.steps) or not 2 <= self.steps <= STEPS_MAX):
            raise ScheduleError(f"{self.said('steps')}: must be a whole number of time-grid points, 2 .. {STEPS_MAX}")
        if self.preset is not None and not isinstance(self.preset, (str, dict)):
            raise ScheduleError(f"{self.said('preset')}: must be a preset name")
        self._time_aware("cfg", 0.0, CFG_MAX, "0 .. {hi:g} (0: no guidance)")
        for name in ("motion", "neg_motion"):
            self._time_aware(name, -MOTION_MAX, MOTION_MAX, "-{hi:g} .. {hi:g} (negative: no motion score)")
        if self.schedule is not None:
            from lumina_rt.sampling import validate_time_aware

            try:
                validate_time_aware(self.schedule, "schedule")
            except ScheduleError as exc:
                raise ScheduleError(f"{self.said('schedule')}: {str(exc).removeprefix('schedule: ')}") from None
        if not _is_int(self.seed) or not 0 <= self.seed <= SEED_MAX:
            raise InputError(f"{self.said('seed')}: must be a whole number 0 .. 2**63-1 ({SEED_MAX})")
        self._cache()
        if not isinstance(self.audio, bool):
            raise InputError(f"{self.said('audio')}: must be true or false")
        if self.audio_steps is not None:
            if not self.audio:
                raise InputError(f"{self.said('audio_steps')}: applies with {self.said('audio', True)} only")
            if not _is_int(self.audio_steps) or not 2 <= self.audio_steps <= STEPS_MAX:
                raise InputError(
                    f"{self.said('audio_steps')}: must be a whole number of time-grid points, 2 .. {STEPS_MAX}"
                )
        if self.scale is not None and (not _is_int(self.scale) or not 1 <= self.scale <= SCALE_MAX):
            raise InputError(f"{self.said('scale')}: must be a whole number 1 .. {SCALE_MAX}")
        if self.upscale is not None and self.upscale not in UPSCALE_FILTERS:
            raise InputError(f"{self.said('upscale')}: choose one of {list(UPSCALE_FILTERS)}")
        if self.out is not None:
            check_output_path(self.out, self.said("out"), self.said("audio", True) if self.audio else None)

    def _prompts(self) -> None:
        if self.caption_features is not None:
            check_caption_features(self.caption_features, self.said("caption_features"))
        if self.has_features or self.caption_features is not None:
            if self.prompts:
                raise InputError(
                    f"{self.said('prompts', self.prompts[0])}: give a prompt or caption features "
                    f"({self.name('caption_features')}), not both"
                )
            return
        if self.prompts is None:
            if self.unconditional:
                self.prompts = [""]
                return
            raise InputError(
                f"{self.name('prompts')} is missing: generate needs a prompt or caption features "
                f"({self.name('caption_features')}), or {self.said('unconditional', True)} for a video with no prompt"
            )
        if not self.prompts:
            raise InputError(f"{self.said('prompts', [])}: give at least one prompt")
        for text in self.prompts:
            if not isinstance(text, str):
                raise InputError(f"{self.said('prompts', text)}: a prompt must be a string")
            if not text.strip() and not self.unconditional:
                raise InputError(
                    f"{self.said('prompts', text)}: the prompt is empty; write one, or "
                    f"{self.said('unconditional', True)} for a video with no prompt"
                )
        if self.unconditional and any(t.strip() for t in self.prompts):
            raise InputError(f"{self.said('unconditional', True)}: takes no prompt (or an empty one)")
        if not isinstance(self.negative_prompt, (str, list)):
            raise InputError(f"{self.said('negative_prompt')}: must be a string")

    def _time_aware(self, name: str, lo: float, hi: float, accepted: str) -> None:
        value = getattr(self, name)
        if value is None:
            return
        for v in _numbers(value):
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    v = None
            if not _is_number(v) or not math.isfinite(v) or not lo <= v <= hi:
                raise ScheduleError(
                    f"{self.said(name)}: must be finite, {accepted.format(hi=hi)}; a number or time-aware JSON "
                    "[default, [t, value], ...]"
                )

    def _cache(self) -> None:
        if self.cache is None:
            return
        value = self.cache
        if isinstance(value, str) and value in CACHE_LEVELS:
            return
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                value = None
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise ScheduleError(f"{self.said('cache')}: choose one of {list(CACHE_LEVELS)} or a threshold >= 0")

    # ------------------------------------------------------------------ against the engines
    def sample_config(self, pipeline: Any, **extra: Any) -> SampleConfig:
        """The recipe (preset with the request's overrides, and `extra` ones: time_shift, renorm), checked against
        the pipeline's scales."""
        try:
            return pipeline.sample_config(
                self.preset, self.steps, self.schedule, self.cfg, self.motion, self.neg_motion, **extra
            )
        except ScheduleError as exc:
            name = next((n for n in ("schedule", "preset") if getattr(self, n) is not None), None)
            if name is None:
                raise
            raise ScheduleError(f"{self.said(name)}: {exc}") from None

    def sizes(self, pipeline: Any) -> tuple[int, int, int]:
        """(frames, height, width): the request's, the missing ones from the pipeline's default size."""
        if None in (self.frames, self.height, self.width) and pipeline.default_size is None:
            missing = [self.name(n) for n in ("frames", "height", "width") if getattr(self, n) is None]
            raise InputError(f"give {', '.join(missing)}: these engines have no served size to default to")
        f_def, h_def, w_def = pipeline.default_size or (0, 0, 0)
        return (self.frames or f_def, self.height or h_def, self.width or w_def)

    def check(
        self, pipeline: Any, batch: int | None = None, grid: Sequence[int] | None = None, **extra: Any
    ) -> tuple[SampleConfig, tuple[int, int, int]]:
        """Before any work: the recipe and sizes against the pipeline's scales and served shapes (`profiles` when
        it has engines), for `batch` prompts (default: the request's). Returns the recipe and (frames, height,
        width). With `grid` (the latent grid of given noise) the sizes are not checked here."""
        config = self.sample_config(pipeline, **{k: v for k, v in extra.items() if v is not None})
        if grid is not None:
            return config, (self.frames or 0, self.height or 0, self.width or 0)
        frames, height, width = self.sizes(pipeline)
        latent = pipeline.latent
        for name, size in (("height", height), ("width", width)):
            if size % latent.spatial_factor:
                raise InputError(
                    f"{self.said(name, size)} is not a multiple of the latent spatial factor {latent.spatial_factor}"
                    f"{self._served(pipeline)}"
                )
        grid = pipeline.latent_shape(frames, height, width)
        combos = config.combos()
        from lumina_rt.config import parse_patch_combo

        for combo in combos:
            pf, p = parse_patch_combo(combo)
            if grid[0] != 1 and grid[0] % pf:
                step = pf * latent.temporal_factor
                raise InputError(
                    f"{self.said('frames', frames)}: scale {combo} of this schedule takes {latent.temporal_factor} "
                    f"frame{'s' * (latent.temporal_factor > 1)} (an image) or a multiple of {step}"
                    f"{self._served(pipeline)}"
                )
            for name, cells, size in (("height", grid[1], height), ("width", grid[2], width)):
                if cells % p:
                    raise InputError(
                        f"{self.said(name, size)}: scale {combo} of this schedule takes a multiple of "
                        f"{p * latent.spatial_factor}{self._served(pipeline)}"
                    )
        profiles = getattr(pipeline, "profiles", None) or {}
        if profiles:
            rows = (batch or len(self.prompts or [None])) * (2 if config.guided else 1)
            for combo in combos:
                prof = profiles[combo]
                pf, p = parse_patch_combo(combo)
                n = (pf if grid[0] == 1 else grid[0]) // pf * (grid[1] // p) * (grid[2] // p)
                if not any(n in r for r in prof.tokens):
                    raise EngineError(
                        f"{self._sizes_said(frames, height, width)}: {n} tokens at scale {combo}, outside every built "
                        f"profile of scale {combo} (up to {prof.max_tokens} tokens){self._served(pipeline)}"
                        f"{self._rebuild(pipeline, 'size')}"
                    )
                if rows not in prof.batch:
                    most = prof.batch.max // (2 if config.guided else 1)
                    raise EngineError(
                        f"{self.name('prompts')}: {rows // (2 if config.guided else 1)} prompts; these engines take "
                        f"at most {most}{' with guidance' if config.guided else ''}{self._rebuild(pipeline, 'batch')}"
                    )
        return config, (frames, height, width)

    def check_caption(self, tokens: int, pipeline: Any) -> None:
        """After encoding: the longest caption (`tokens`) against every engine's caption range."""
        for prof in (getattr(pipeline, "profiles", None) or {}).values():
            if tokens not in prof.caption:
                raise EngineError(
                    f"{self.name('prompts')}: {tokens} caption tokens, these engines take at most {prof.caption.max} "
                    f"(shorten the prompt{self._rebuild(pipeline, 'caption', inner=True)})"
                )

    def _sizes_said(self, frames: int, height: int, width: int) -> str:
        parts = [self.said(n, v) for n, v in (("frames", frames), ("height", height), ("width", width))]
        return (" " if self.source == "cli" else ", ").join(parts)

    @staticmethod
    def _served(pipeline: Any) -> str:
        served = getattr(pipeline, "served", None)
        if not served:
            return ""
        return "; served frames x height x width: " + ", ".join(f"{f}x{h}x{w}" for f, h, w in served)

    def _rebuild(self, pipeline: Any, what: str, inner: bool = False) -> str:
        if getattr(pipeline, "builtin", False):
            return ""
        if what == "size":
            return " (or rebuild the engines for that size: lumina-rt build --resolutions / --frames)"
        flag = {"batch": "--max-batch", "caption": "--max-caption"}[what]
        return f", or rebuild with a larger {flag}" if inner else f" (rebuild with a larger {flag})"


def _num(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


__all__ = [
    "CFG_MAX",
    "FPS_MAX",
    "MOTION_MAX",
    "NAMES",
    "RULES",
    "SCALE_MAX",
    "SEED_MAX",
    "STEPS_MAX",
    "GenerationRequest",
    "check_caption_features",
    "check_output_path",
    "load_caption_features",
]
