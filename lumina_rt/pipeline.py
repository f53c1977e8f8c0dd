"""The generation pipeline: prompts -> caption features -> noise -> sampler (any velocity function) -> decode -> video
(-> sound, with an audio stage).

`Pipeline` is the one generation path of the project. It takes a velocity function and never knows what computes
it: the engines of an engine directory (`Pipeline.from_engines`, what `lumina_rt.Runtime` serves) or the reference
torch model of a checkpoint (`Pipeline.from_checkpoint`). The same seed, sizes and recipe give the same noise, the
same guided Euler steps and the same decoding either way.

Components (text encoder, decoder, latent spec, sample presets) come from the directory's `components.json`
(`lumina_rt.components`), loaded on first use. Sound is one more stage after decoding: `generate(..., audio=stage)`
hands the decoded clips to an `AudioStage` (`lumina_rt.v2a.soundtrack.Soundtrack`: a V2A model) and the result carries
the waveforms, which `GenerationResult.save` muxes into the MP4.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lumina_rt import components
from lumina_rt.caching import StepCache
from lumina_rt.components import Decoder, LatentSpec, TextEncoder
from lumina_rt.config import ModelConfig
from lumina_rt.errors import Cancelled, ConfigError, InputError, ScheduleError, TextEncoderError
from lumina_rt.flops import FlopCount
from lumina_rt.request import GenerationRequest
from lumina_rt.sampling import SAMPLE_PRESETS, Conditioning, SampleConfig, TimeAware, VelocityFn, sample_euler

# check_request(latent grid, scheduled combos, rows per call, caption tokens, the request in the user's words)
RequestCheck = Callable[[Sequence[int], Sequence[str], int, int, str], None]
# callback(steps done, total steps, patch combo of the step just run) after each sampler step; True stops sampling
StepCallback = Callable[[int, int, str], Any]


class AudioStage(Protocol):
    """Sound for decoded clips (`lumina_rt.v2a.soundtrack.Soundtrack`); the pipeline knows only this much of it."""

    @property
    def sample_rate(self) -> int: ...

    def check(self, frames: int, fps: float, what: str = "the clip") -> int:
        """InputError naming the request when a clip of `frames` frames at `fps` cannot get sound."""
        ...

    def batch(
        self,
        frames: torch.Tensor,
        fps: float,
        prompts: list[str | None] | None = None,
        *,
        seed: int = 0,
        progress: bool = True,
    ) -> torch.Tensor:
        """Waveforms [B, samples] as long as the clips [B, 3, F, H, W] at `fps`."""
        ...


def make_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """The initial noise of `generate`: float32 normal on CPU from `torch.Generator().manual_seed(seed)`."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(tuple(int(s) for s in shape), generator=gen)


@dataclass
class GenerationResult:
    """What `generate` returns: latents [B, C, f, h, w]; with a decoder, frames [B, 3, F, H, W] in [0, 1]; with an
    audio stage, waveforms [B, samples] at `sample_rate`, as long as the clips at `fps`."""

    latents: torch.Tensor
    frames: torch.Tensor | None
    config: SampleConfig
    seed: int
    backend: str
    seconds: float
    steps: list[str] = field(default_factory=list)  # patch combo of each model evaluation
    cache: dict[str, Any] | None = None  # with step caching: evaluations and reused steps per scale
    # model FLOPs spent: {"total": n, "per_scale": {combo: {"positive": n, "negative": n}}} (None: model unknown)
    flops: dict[str, Any] | None = None
    audio: torch.Tensor | None = None  # [B, samples], one waveform per clip
    sample_rate: int | None = None
    fps: float | None = None  # the frame rate the sound was made for (the video's)
    sampling_seconds: float | None = None  # of `seconds`, the time spent in the sampler
    scale: int = 1  # the upscale `save` uses by default (the built-in model's: BUILTIN_SCALE, as `generate --builtin`)
    upscale: str = "nearest"  # the filter it upscales with by default (the built-in model's: BUILTIN_UPSCALE)

    @property
    def evaluations(self) -> int:
        """How many times the model ran (grid points - 1 without caching)."""
        return len(self.steps)

    @property
    def video(self) -> torch.Tensor:
        """The decoded frames when there is a decoder, else the latents."""
        return self.frames if self.frames is not None else self.latents

    def save(
        self,
        path: str | os.PathLike,
        fps: float | None = None,
        scale: int | None = None,
        audio: bool = True,
        upscale: str | None = None,
    ) -> Path:
        """Write the video (MP4 or GIF by suffix; default fps: the sound's, else 8; default scale and upscale filter:
        the pipeline's, BUILTIN_SCALE and BUILTIN_UPSCALE for the built-in model, else 1 and nearest) into an
        existing, writable folder (InputError otherwise); without a decoder, a preview of the latents' first
        channels. With sound (and `audio`), an MP4 with one sound track per clip."""
        from lumina_rt.video import latent_preview, write_video

        # path, fps, scale and upscale checked as a request's
        GenerationRequest(has_features=True, fps=fps or self.fps or 8, scale=scale, upscale=upscale, out=str(path))
        scale = self.scale if scale is None else scale
        upscale = self.upscale if upscale is None else upscale
        video = self.frames if self.frames is not None else latent_preview(self.latents)
        if self.audio is None or not audio:
            return write_video(video, path, fps=fps or self.fps or 8, scale=scale, upscale=upscale)
        if fps is not None and self.fps is not None and float(fps) != float(self.fps):
            raise InputError(
                f"the sound of this result was made for {self.fps:g} fps; saving {str(path)!r} at {float(fps):g} fps "
                f"would put it out of step (save with fps={self.fps:g}, or audio=False)"
            )
        return write_video(
            video, path, fps=self.fps or 8, scale=scale, audio=self.audio, sample_rate=self.sample_rate, upscale=upscale
        )


class Pipeline:
    """encode -> noise -> sample -> decode around one velocity function (see module docstring)."""

    def __init__(
        self,
        velocity: VelocityFn,
        *,
        patch_combos: Sequence[str],
        cap_feat_dim: int,
        components_dir: str | os.PathLike | None,
        latent: LatentSpec,
        presets: dict[str, dict[str, Any]] | None = None,
        default_preset: str = "",
        default_size: tuple[int, int, int] | None = None,
        check_request: RequestCheck | None = None,
        backend: str = "",
        audio: AudioStage | Callable[[], AudioStage | None] | None = None,
        profiles: dict[str, Any] | None = None,
        model_config: ModelConfig | None = None,
    ):
        """`audio`: the audio stage `generate(..., audio=True)` uses, or a function that loads it on first use.
        `profiles`: the engines' shape ranges per scale (`lumina_rt.engines.profiles.ScaleProfile`), which
        `GenerationRequest.check` checks requests against before any work."""
        self.velocity = velocity
        self.patch_combos = tuple(patch_combos)
        self.cap_feat_dim = int(cap_feat_dim)
        self.components_dir = None if components_dir is None else Path(components_dir)
        self.latent = latent
        self._presets = {**SAMPLE_PRESETS, **(presets or {})}
        self.default_preset = default_preset
        self.default_size = default_size
        self.check_request = check_request
        self.backend = backend
        self._text_encoder: TextEncoder | None = None
        self._decoder: Decoder | None = None
        self._audio = audio
        self.profiles = dict(profiles or {})
        self.model_config = model_config  # what `GenerationResult.flops` is computed from (None: not counted)
        shapes = [s for p in self.profiles.values() for s in p.served]
        served = {(int(s["frames"]), int(s["height"]), int(s["width"])) for s in shapes}
        self.served = sorted(served)  # (frames, height, width) the engines were built for, for error messages
        self.builtin = False  # the built-in model's engines: errors give no rebuild advice (Runtime.builtin)
        self.default_scale = 1  # what GenerationResult.save upscales by default (Runtime.builtin: BUILTIN_SCALE)
        self.default_upscale = "nearest"  # ... and with which filter (Runtime.builtin: BUILTIN_UPSCALE)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_engines(
        cls,
        engines: Any,
        velocity: VelocityFn | None = None,
        audio: AudioStage | Callable[[], AudioStage | None] | None = None,
    ) -> Pipeline:
        """Around an `EngineSet`: its velocity (or `velocity`, e.g. a parallel one over its engines), served sizes,
        request check and the components copied by the build; `audio`: the audio stage (or its loader)."""
        served = [s for p in engines.profiles.values() for s in p.served]
        best = max(served, key=lambda s: s["tokens"]) if served else None
        return cls(
            engines.velocity if velocity is None else velocity,
            patch_combos=engines.patch_combos,
            cap_feat_dim=engines.config.cap_feat_dim,
            components_dir=engines.engine_dir,
            latent=components.latent_spec(engines.engine_dir, engines.config.in_channels),
            presets=engines.manifest.get("sample_presets") or {},
            default_preset=str(engines.manifest.get("default_sample_preset") or ""),
            default_size=None if best is None else (int(best["frames"]), int(best["height"]), int(best["width"])),
            check_request=engines.check_request,
            backend=engines.backend_name,
            audio=audio,
            profiles=engines.profiles,
            model_config=engines.config,
        )

    @classmethod
    def from_checkpoint(
        cls, directory: str | os.PathLike, default_preset: str | None = None, dtype: torch.dtype = torch.float32
    ) -> Pipeline:
        """Around the reference torch model of a checkpoint directory (no engines): `model.velocity`.

        With `dtype` (e.g. torch.bfloat16) the model runs in that precision: latents and caption features are cast
        to it and the velocity back to float32, as a bf16 engine does. Kernels: whatever `lumina_rt.ops` selects.
        """
        from lumina_rt.checkpoint import load_model

        model = load_model(directory).to(dtype)
        presets = components.read_components(directory).get("sampling") or {}
        velocity = model.velocity
        if dtype != torch.float32:

            def velocity(x, t, cap_feats, cap_mask, motion, combo):  # noqa: ANN001, ANN202
                return model.velocity(x.to(dtype), t, cap_feats.to(dtype), cap_mask, motion, combo).float()

        return cls(
            velocity,
            patch_combos=model.config.patch_combos,
            cap_feat_dim=model.config.cap_feat_dim,
            components_dir=directory,
            latent=components.latent_spec(directory, model.config.in_channels),
            presets=presets,
            default_preset=default_preset if default_preset is not None else next(iter(presets), ""),
            backend="reference" if dtype == torch.float32 else f"reference {str(dtype).removeprefix('torch.')}",
            model_config=model.config,
        )

    # ------------------------------------------------------------------ components
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            encoder = None if self.components_dir is None else components.load_text_encoder(self.components_dir)
            if encoder is None:
                raise TextEncoderError(
                    f"{str(self.components_dir)!r} has no text encoder (components.json names none): pass caption "
                    "features (cap_feats / cap_mask) instead of a prompt"
                )
            self._text_encoder = encoder
        return self._text_encoder

    def decoder(self) -> Decoder | None:
        if self._decoder is None and self.components_dir is not None:
            self._decoder = components.load_decoder(self.components_dir)
        return self._decoder

    def use_audio(self, audio: AudioStage | Callable[[], AudioStage | None] | None) -> None:
        """Set the audio stage `generate(..., audio=True)` uses, or a function that loads it on first use."""
        self._audio = audio

    def audio_stage(self) -> AudioStage:
        """The pipeline's audio stage (loaded on first use); ConfigError when it has none."""
        if self._audio is not None and not hasattr(self._audio, "batch"):
            self._audio = self._audio()  # a loader
        if self._audio is None:
            raise ConfigError(
                f"{str(self.components_dir)!r} has no sound model: pass an audio stage (generate(..., "
                "audio=lumina_rt.v2a.soundtrack.Soundtrack(v2a)), or build the engines with a V2A model"
            )
        return self._audio  # type: ignore[return-value]

    def encode(self, prompts: list[str]) -> Conditioning:
        feats, mask = self.text_encoder().encode(prompts)
        if feats.shape[-1] != self.cap_feat_dim:
            raise TextEncoderError(
                f"the text encoder gives {feats.shape[-1]}-wide features, the model takes {self.cap_feat_dim}"
            )
        return Conditioning(feats.float(), mask.to(torch.int64))

    @staticmethod
    def _features(feats: torch.Tensor, mask: torch.Tensor | None, what: str) -> Conditioning:
        feats = feats[None] if feats.dim() == 2 else feats
        if feats.dim() != 3:
            raise InputError(f"{what} must be [L, D] or [B, L, D], got shape {tuple(feats.shape)}")
        if mask is None:
            mask = torch.ones(feats.shape[:2], dtype=torch.int64)
        mask = mask[None] if mask.dim() == 1 else mask
        return Conditioning(feats.float(), mask.to(torch.int64))

    # ------------------------------------------------------------------ recipes and sizes
    def presets(self) -> dict[str, dict[str, Any]]:
        """Released sample presets plus those the checkpoint's components declare."""
        return dict(self._presets)

    def sample_config(
        self,
        preset: str | dict[str, Any] | None = None,
        steps: int | None = None,
        schedule: TimeAware | None = None,
        cfg: TimeAware | None = None,
        motion: TimeAware | None = None,
        neg_motion: TimeAware | None = None,
        time_shift: float | None = None,
        renorm: float | None = None,
    ) -> SampleConfig:
        """A preset (a name, default the pipeline's, or a recipe dict) with overrides, checked against the scales."""
        name = preset if preset is not None else self.default_preset
        if isinstance(name, dict):
            base, name = dict(name), str(name.get("name", "custom"))
        elif name not in self._presets:
            if preset is None and schedule is not None:
                base: dict[str, Any] = {}
            else:
                raise ScheduleError(f"unknown sample preset {name!r}; known presets: {sorted(self._presets)}")
        else:
            base = dict(self._presets[name])
        base["name"] = name or "custom"
        for key, value in (
            ("step", steps),
            ("P", schedule),
            ("cfg", cfg),
            ("motion", motion),
            ("negMotion", neg_motion),
            ("ts", time_shift),
            ("renorm", renorm),
        ):
            if value is not None:
                base[key] = value
        config = SampleConfig.from_dict(base)
        config.validate(self.patch_combos)
        return config

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(f, h, w) of the latent for a video of frames x height x width pixels (the latent spec)."""
        return self.latent.latent_shape(frames, height, width)

    def noise(self, batch: int, frames: int, height: int, width: int, seed: int) -> torch.Tensor:
        """The initial noise `generate` uses for these sizes and seed (reproducible with `make_noise`)."""
        return make_noise((batch, self.latent.channels, *self.latent_shape(frames, height, width)), seed)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[str] | None = None,
        *,
        negative_prompt: str | Sequence[str] = "",
        unconditional: bool = False,
        cap_feats: torch.Tensor | None = None,
        cap_mask: torch.Tensor | None = None,
        neg_cap_feats: torch.Tensor | None = None,
        neg_cap_mask: torch.Tensor | None = None,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        preset: str | dict[str, Any] | None = None,
        schedule: TimeAware | None = None,
        cfg: TimeAware | None = None,
        motion: TimeAware | None = None,
        neg_motion: TimeAware | None = None,
        item_motion: Sequence[float] | None = None,
        time_shift: float | None = None,
        renorm: float | None = None,
        seed: int = 0,
        noise: torch.Tensor | None = None,
        cache: str | float | StepCache | None = None,
        progress: bool = True,
        decode: bool = True,
        audio: bool | AudioStage = False,
        audio_steps: int | None = None,
        fps: float = 8,
        callback: StepCallback | None = None,
    ) -> GenerationResult:
        """Sample videos: a prompt (or caption features), sizes in pixels, a preset (name or recipe dict with the
        released keys P / step / ts / renorm / cfg / motion / negMotion) or an explicit schedule.

        `schedule` is a time-aware patch combo (`"1x2"` or `["2x4", [0.1, "2x2"], [0.3, "1x2"]]`); `cfg`, `motion`,
        `neg_motion` are time-aware too; `item_motion` gives one motion score per prompt instead (the schedule's
        unconditioned spans stay unconditioned). Guidance (cfg > 0) runs the negative condition (`negative_prompt`,
        default "", or `neg_cap_feats`) in the same batch. Sizes default to the largest served shape. `cache`: step
        caching (`lumina_rt.caching`: "off", "safe", "fast" or a threshold); the result says what it skipped.
        `audio`: True (the pipeline's audio stage) or an `AudioStage` gives each decoded clip, played at `fps`, a
        sound made from its frames and prompt with `seed` (`audio_steps`: the sound model's grid points); a request
        it cannot serve fails before sampling. An empty prompt is refused unless `unconditional=True`.
        `callback(done, total, combo)` runs after each sampler step (`done` of `total` steps, `combo` the step's patch
        size; with step caching, after the evaluated ones); returning True stops sampling with `errors.Cancelled`.

        The keywords are checked as a `lumina_rt.request.GenerationRequest` (docs/requests.md): errors name them
        (`frames=0`), say what is accepted, and are the CLI's and the server's, word for word.
        """
        request = GenerationRequest.from_python(
            prompt,
            negative_prompt=list(negative_prompt) if not isinstance(negative_prompt, str) else negative_prompt,
            unconditional=unconditional,
            has_features=cap_feats is not None,
            frames=frames,
            height=height,
            width=width,
            fps=fps,
            steps=steps,
            preset=preset,
            schedule=schedule,
            cfg=cfg,
            motion=motion,
            neg_motion=neg_motion,
            seed=seed,
            cache=cache if not isinstance(cache, StepCache) else None,
            audio=audio is not False and audio is not None,
            audio_steps=audio_steps,
        )
        return self.run(
            request,
            cap_feats=cap_feats,
            cap_mask=cap_mask,
            neg_cap_feats=neg_cap_feats,
            neg_cap_mask=neg_cap_mask,
            item_motion=item_motion,
            time_shift=time_shift,
            renorm=renorm,
            noise=noise,
            cache=cache if isinstance(cache, StepCache) else None,
            progress=progress,
            decode=decode,
            audio=None if isinstance(audio, bool) or audio is None else audio,
            callback=callback,
        )

    @torch.no_grad()
    def run(
        self,
        request: GenerationRequest,
        *,
        cap_feats: torch.Tensor | None = None,
        cap_mask: torch.Tensor | None = None,
        neg_cap_feats: torch.Tensor | None = None,
        neg_cap_mask: torch.Tensor | None = None,
        item_motion: Sequence[float] | None = None,
        time_shift: float | None = None,
        renorm: float | None = None,
        noise: torch.Tensor | None = None,
        cache: StepCache | None = None,
        progress: bool = True,
        decode: bool = True,
        audio: AudioStage | None = None,
        callback: StepCallback | None = None,
    ) -> GenerationResult:
        """Run a checked `GenerationRequest` (what `generate` builds from its keywords, the CLI from its flags):
        tensors the request does not hold (caption features, noise, item_motion) and an audio stage come beside
        it; errors name the request's fields as its caller wrote them."""
        start = time.perf_counter()
        policy = cache if cache is not None else StepCache.from_setting(request.cache)
        if cap_feats is not None:
            pos = self._features(cap_feats, cap_mask, "cap_feats")
        else:
            pos = self.encode(list(request.prompts or [""]))
        batch = pos.cap_feats.shape[0]
        if pos.cap_feats.shape[-1] != self.cap_feat_dim:
            raise InputError(f"cap_feats are {pos.cap_feats.shape[-1]} wide, the model takes {self.cap_feat_dim}")
        grid = None if noise is None else tuple(noise.shape[2:])
        config, (frames, height, width) = request.check(self, batch, grid, time_shift=time_shift, renorm=renorm)
        per_item = None
        if item_motion is not None:
            if len(item_motion) != batch:
                raise InputError(f"{len(item_motion)} motion scores (item_motion) for {batch} prompts")
            per_item = torch.tensor([float(m) for m in item_motion], dtype=torch.float32)

        neg = None
        if config.guided:
            if neg_cap_feats is not None:
                neg = self._features(neg_cap_feats, neg_cap_mask, "neg_cap_feats")
            else:
                negative_prompt = request.negative_prompt
                negs = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
                try:
                    neg = self.encode(negs)
                except TextEncoderError as exc:
                    raise InputError(
                        f"guidance (cfg > 0) needs a negative condition: pass neg_cap_feats, or cfg=0 ({exc})"
                    ) from None
            if neg.cap_feats.shape[0] != batch:
                raise InputError(f"{neg.cap_feats.shape[0]} negative conditions for {batch} prompts")
        caption = max(pos.cap_feats.shape[1], 0 if neg is None else neg.cap_feats.shape[1])
        request.check_caption(int(caption), self)

        if noise is None:
            grid = self.latent_shape(frames, height, width)
            asked = f"{batch} prompt{'s' * (batch > 1)}, {frames}x{height}x{width} (frames x height x width)"
            z = make_noise((batch, self.latent.channels, *grid), request.seed)
        else:
            z = noise.float()
            if z.dim() != 5 or z.shape[0] != batch or z.shape[1] != self.latent.channels:
                raise InputError(f"noise must be [{batch}, {self.latent.channels}, f, h, w], got {tuple(z.shape)}")
            grid = tuple(z.shape[2:])
            asked = f"{batch} prompt{'s' * (batch > 1)}, latent noise {tuple(z.shape)}"
        stage = None
        fps = request.fps
        if request.audio or audio is not None:
            if not decode:
                raise InputError("audio needs decoded frames: generate with decode=True")
            stage = self.audio_stage() if audio is None else audio
            if request.audio_steps is not None:
                stage.steps = request.audio_steps  # type: ignore[attr-defined]
            if noise is None:  # the decoder's frame count is known only after decoding; checked again then
                stage.check(int(frames), fps, f"the requested video ({asked})")
        if self.check_request is not None:
            rows = batch * (2 if config.guided else 1)
            self.check_request(grid, config.combos(), rows, int(caption), asked + (" with guidance" if neg else ""))

        used: list[str] = []

        def _step_done(k: int, combo: str) -> None:  # sample_euler calls before step k: step k - 1 is done
            if used and callback is not None and callback(k, config.step - 1, used[-1]) is True:
                raise Cancelled(f"sampling stopped by its callback after step {k} of {config.step - 1}")
            if combo:
                used.append(combo)

        run = policy.start() if policy is not None else None
        counter = None if self.model_config is None else FlopCount(self.model_config, batch)
        sample_start = time.perf_counter()
        latents = sample_euler(
            self.velocity if counter is None else counter.wrap(self.velocity),
            z,
            pos,
            neg,
            config,
            progress=progress,
            callback=lambda k, t, combo: _step_done(k, combo),
            patch_combos=self.patch_combos,
            item_motion=per_item,
            cache=run,
        )
        _step_done(config.step - 1, "")
        sampling = time.perf_counter() - sample_start
        video = None
        if decode:
            decoder = self.decoder()
            if decoder is not None:
                video = decoder.decode(latents / self.latent.scale)
        waves = None
        if stage is not None:
            if video is None:
                raise InputError(f"{str(self.components_dir)!r} has no decoder: there are no frames to make sound for")
            prompt_list = None if cap_feats is not None else list(request.prompts or [""])
            waves = stage.batch(video, fps, prompt_list, seed=request.seed, progress=progress)
        return GenerationResult(
            latents=latents,
            frames=video,
            config=config,
            seed=int(request.seed),
            backend=self.backend,
            seconds=time.perf_counter() - start,
            steps=used,
            cache=None if run is None else run.summary(),
            flops=None if counter is None else counter.summary(),
            audio=waves,
            sample_rate=None if stage is None else int(stage.sample_rate),
            fps=None if stage is None else float(fps),
            scale=self.default_scale,
            upscale=self.default_upscale,
            sampling_seconds=sampling,
        )
