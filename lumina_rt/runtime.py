"""`Runtime(engine_dir)`: the multi-scale engines of an engine directory behind one velocity function.

The runtime reads only the engine directory: `manifest.json`, the files it names, and the components
(text encoder, decoder, latent spec) the build copied there; never the checkpoint. It

- picks a backend: TensorRT -> ONNX Runtime on CUDA -> torch with Triton kernels on CUDA -> ONNX Runtime on
  CPU -> torch on CPU (the first that can run here; `backend=` or `LUMINA_RT_ENGINE_BACKEND` overrides);
- serves `velocity(x, t, cap_feats, cap_mask, motion, combo)` for the sampler: patchify, RoPE tables, profile
  check, then the engine of the patch size the schedule names (guidance batches positive and negative rows);
- offers `generate(...)`: text (or caption features) -> noise -> Euler sampling over a time-aware patch schedule
  -> decoded frames (or latents), with `GenerationResult.save("video.mp4")`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lumina_rt import components, ops
from lumina_rt.config import ModelConfig, parse_patch_combo
from lumina_rt.engines import BACKENDS, ScaleEngine
from lumina_rt.engines.weights import WeightStore
from lumina_rt.errors import (
    BackendUnavailableError,
    ConfigError,
    EngineError,
    InputError,
    ScheduleError,
    TextEncoderError,
)
from lumina_rt.export.manifest import read_manifest, verify_file
from lumina_rt.export.profiles import ScaleProfile, scale_tokens
from lumina_rt.model import rope_tables
from lumina_rt.sampling import SAMPLE_PRESETS, Conditioning, SampleConfig, TimeAware, sample_euler

logger = logging.getLogger(__name__)

BACKEND_ENV = "LUMINA_RT_ENGINE_BACKEND"


def make_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """The initial noise of `generate`: float32 normal on CPU from `torch.Generator().manual_seed(seed)`."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(tuple(int(s) for s in shape), generator=gen)


@dataclass
class GenerationResult:
    """What `Runtime.generate` returns: latents [B, C, f, h, w]; with a decoder, frames [B, 3, F, H, W] in [0, 1]."""

    latents: torch.Tensor
    frames: torch.Tensor | None
    config: SampleConfig
    seed: int
    backend: str
    seconds: float
    steps: list[str] = field(default_factory=list)  # patch combo used at each step

    @property
    def video(self) -> torch.Tensor:
        """The decoded frames when the engine directory has a decoder, else the latents."""
        return self.frames if self.frames is not None else self.latents

    def save(self, path: str | os.PathLike, fps: int = 8, scale: int = 1) -> Path:
        """Write the video (MP4 or GIF by suffix); without a decoder, a preview of the latents' first channels."""
        from lumina_rt.video import latent_preview, write_video

        video = self.frames if self.frames is not None else latent_preview(self.latents)
        return write_video(video, path, fps=fps, scale=scale)


class Runtime:
    """Engines of one engine directory (see module docstring)."""

    def __init__(
        self,
        engine_dir: str | os.PathLike,
        backend: str = "auto",
        scales: Sequence[str] | None = None,
        verify: bool = True,
        threads: int | None = None,
    ):
        self.engine_dir = Path(engine_dir)
        self.manifest = read_manifest(self.engine_dir)
        model = self.manifest["model"]
        try:
            self.config = ModelConfig.from_kwargs(model["config"], name=model.get("name", "custom"))
        except (ConfigError, TypeError, KeyError) as exc:
            raise EngineError(f"the manifest in {str(self.engine_dir)!r} has an invalid model config: {exc}") from None
        self.patch_combos = tuple(self.manifest["scales"])
        for combo in self.patch_combos:
            if combo not in self.config.patch_combos:
                raise EngineError(f"the manifest lists scale {combo!r}, which its model config does not have")
        self.profiles = {c: ScaleProfile.from_dict(c, s.get("profile", {})) for c, s in self.manifest["scales"].items()}
        self.verify = verify
        self.threads = threads
        self.backend_reasons: dict[str, str] = {}
        requested = os.environ.get(BACKEND_ENV, backend) if backend == "auto" else backend
        self.backend_name = self._select_backend(requested)
        self._store: WeightStore | None = None
        self._ort_shared: Any = None
        self._engines: dict[str, ScaleEngine] = {}
        self._latent = components.latent_spec(self.engine_dir, self.config.in_channels)
        self._text_encoder: Any = None
        self.load(self.patch_combos if scales is None else scales)

    # ------------------------------------------------------------------ identity checks
    @property
    def weights_hash(self) -> str:
        return str(self.manifest["model"].get("weights_hash"))

    def check_config(self, config: ModelConfig) -> None:
        """EngineError naming the differing fields when the engines were built from another model config."""
        mine, theirs = self.config.to_kwargs(), config.to_kwargs()
        diff = {
            k: (mine.get(k), theirs.get(k)) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)
        }
        if diff:
            shown = ", ".join(f"{k}: engines {a!r} vs {b!r}" for k, (a, b) in diff.items())
            raise EngineError(f"the engines in {str(self.engine_dir)!r} were built from another model config ({shown})")

    def check_weights(self, weights_hash: str) -> None:
        """EngineError when the engines were built from other weights than those with this hash."""
        if weights_hash != self.weights_hash:
            raise EngineError(
                f"the engines in {str(self.engine_dir)!r} were built from other weights (weights hash "
                f"{self.weights_hash[:12]}..., expected {weights_hash[:12]}...); rebuild with `lumina-rt build`"
            )

    # ------------------------------------------------------------------ backend selection and loading
    def _unavailable(self, name: str) -> str | None:
        scales = self.manifest["scales"]
        if name == "tensorrt":
            if any(not s.get("engine") for s in scales.values()):
                return f"the engines were built for {self.manifest['backend']} (no TensorRT plans in the manifest)"
            from lumina_rt.engines import tensorrt_engine

            reason = tensorrt_engine.unavailable_reason()
            if reason:
                return reason
            built = self.manifest["runtime"].get("version")
            if built != tensorrt_engine.version():
                return f"plans were built by TensorRT {built}, this is TensorRT {tensorrt_engine.version()}"
            arch = (self.manifest.get("gpu") or {}).get("arch")
            here = (tensorrt_engine.gpu_info() or {}).get("arch")
            if arch != here:
                return f"plans were built for GPU {arch}, this GPU is {here}"
            return None
        if name in ("onnxruntime", "onnxruntime-cuda"):
            from lumina_rt.engines import onnxruntime_engine

            if onnxruntime_engine.version() is None:
                return "ONNX Runtime is not installed"
            return onnxruntime_engine.cuda_unavailable_reason() if name == "onnxruntime-cuda" else None
        if name == "torch-triton":
            from lumina_rt.engines import torch_engine

            return torch_engine.triton_unavailable_reason()
        if name == "torch":
            return None
        raise BackendUnavailableError(f"unknown engine backend {name!r}; choose 'auto' or one of {BACKENDS}")

    def _select_backend(self, requested: str) -> str:
        if requested != "auto":
            reason = self._unavailable(requested)
            if reason:
                raise BackendUnavailableError(f"engine backend {requested!r} cannot run: {reason}")
            return requested
        for name in BACKENDS:
            reason = self._unavailable(name)
            if reason is None:
                logger.info("engine backend: %s", name)
                return name
            self.backend_reasons[name] = reason
            logger.debug("engine backend %s skipped: %s", name, reason)
        raise BackendUnavailableError(f"no engine backend can run here: {self.backend_reasons}")

    def _weights(self) -> WeightStore:
        if self._store is None:
            entry = self.manifest["weights"]
            path = verify_file(self.engine_dir, entry, "weights", full=False)
            store = WeightStore(path, entry, entry.get("bytes"))
            if self.verify and hashlib.sha256(store.buffer).hexdigest() != entry.get("sha256"):
                raise EngineError(
                    f"weights file {str(path)!r} is corrupt or from another build: its SHA-256 differs from the "
                    "manifest's; rebuild the engines"
                )
            self._store = store
        return self._store

    def load(self, combos: Sequence[str]) -> None:
        """Load the engines of these patch combos (the rest load on first use)."""
        combos = [c for c in combos if c not in self._engines]
        for combo in combos:
            self._scale(combo)
        if not combos:
            return
        scales = self.manifest["scales"]
        name = self.backend_name
        if name in ("onnxruntime", "onnxruntime-cuda"):
            from lumina_rt.engines import onnxruntime_engine

            files = {}
            for c in combos:
                files[c] = verify_file(self.engine_dir, scales[c].get("onnx"), f"ONNX graph of scale {c}", self.verify)
            cuda = name == "onnxruntime-cuda"
            if self._ort_shared is None:  # one set of OrtValues for every session, also those loaded later
                self._ort_shared = onnxruntime_engine.SharedInitializers(self._weights(), "cuda" if cuda else "cpu")
            rel = {c: str(p.relative_to(self.engine_dir)) for c, p in files.items()}
            loaded = onnxruntime_engine.load(
                self.engine_dir, rel, self._weights(), cuda=cuda, threads=self.threads, shared=self._ort_shared
            )
            self._engines.update(loaded)
        elif name == "tensorrt":
            from lumina_rt.engines import tensorrt_engine

            plans = {}
            for c in combos:
                entry = scales[c]["engine"]
                verify_file(self.engine_dir, entry, f"TensorRT plan of scale {c}", self.verify)
                verify_file(self.engine_dir, scales[c].get("onnx"), f"ONNX graph of scale {c}", self.verify)
                self._weights()
                plans[c] = {"plan": entry["path"], "onnx": scales[c]["onnx"]["path"], "stripped": entry.get("stripped")}
            self._engines.update(tensorrt_engine.load(self.engine_dir, plans))
        else:
            from lumina_rt.engines import torch_engine

            shared = next((e for e in self._engines.values() if hasattr(e, "model")), None)
            if shared is not None:
                self._engines.update(
                    {c: torch_engine.TorchScaleEngine(c, shared.model, shared.kernel_backend) for c in combos}
                )
            else:
                self._engines.update(
                    torch_engine.load(self.config, combos, self._weights(), cuda=name == "torch-triton")
                )

    def _scale(self, combo: str) -> None:
        if combo not in self.manifest["scales"]:
            raise EngineError(
                f"no engine for patch combo {combo!r} in {str(self.engine_dir)!r}; it has {list(self.patch_combos)}"
            )

    def engine(self, combo: str) -> ScaleEngine:
        if combo not in self._engines:
            self.load([combo])
        return self._engines[combo]

    @property
    def loaded_scales(self) -> list[str]:
        return list(self._engines)

    # ------------------------------------------------------------------ velocity (the sampler's view)
    def velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion: torch.Tensor,
        combo: str,
    ) -> torch.Tensor:
        """Velocity of x [B, C, F, H, W] with the engine of patch `combo` (F = 1: an image)."""
        self._scale(combo)
        pf, p = parse_patch_combo(combo)
        if x.dim() != 5:
            raise InputError(f"x must be [B, C, F, H, W], got shape {tuple(x.shape)}")
        b, c, frames, height, width = x.shape
        if c != self.config.in_channels:
            raise InputError(f"x has {c} channels, the engines take in_channels={self.config.in_channels}")
        if cap_feats.dim() != 3 or cap_feats.shape[0] != b or cap_feats.shape[2] != self.config.cap_feat_dim:
            raise InputError(f"cap_feats must be [{b}, L, {self.config.cap_feat_dim}], got {tuple(cap_feats.shape)}")
        if tuple(cap_mask.shape) != tuple(cap_feats.shape[:2]):
            raise InputError(f"cap_mask shape {tuple(cap_mask.shape)} does not match cap_feats [B, L]")
        if tuple(t.shape) != (b,) or tuple(motion.shape) != (b,):
            raise InputError(f"t and motion must have shape ({b},), got {tuple(t.shape)} and {tuple(motion.shape)}")
        try:
            n = scale_tokens((frames, height, width), pf, p)
        except InputError as exc:
            raise InputError(
                f"unsupported resolution {frames}x{height}x{width} (latent) for scale {combo}: {exc}"
            ) from None
        index = self.profiles[combo].select(b, n, int(cap_feats.shape[1]))
        f_compute = pf if frames == 1 else frames
        cos, sin = rope_tables(f_compute // pf, height // p, width // p, self.config.head_dim, self.config.rope_theta)
        with ops.use_backend("torch"):
            tokens = ops.patchify(x.float(), pf, p, p)
        out = self.engine(combo).run(tokens, cos, sin, t.float(), cap_feats.float(), cap_mask, motion.float(), index)
        with ops.use_backend("torch"):
            return ops.unpatchify(out.to(x.device), frames, height, width, pf, p, p)

    def forward_list(
        self,
        items: list[torch.Tensor],
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion: torch.Tensor,
        combo: str,
    ) -> list[torch.Tensor]:
        """Items [C, F_i, H_i, W_i] of different sizes, run one by one (each sees only its own caption)."""
        if len(items) == 0:
            raise InputError("forward_list got an empty list of items")
        out = []
        for i, item in enumerate(items):
            if item.dim() != 4:
                raise InputError(f"list item {i} must be [C, F, H, W], got shape {tuple(item.shape)}")
            sl = slice(i, i + 1)
            out.append(self.velocity(item[None], t[sl], cap_feats[sl], cap_mask[sl], motion[sl], combo)[0])
        return out

    def evaluator(self) -> Runtime:
        """A parity `Evaluator` (velocity + forward_list) running these engines."""
        return self

    # ------------------------------------------------------------------ generation
    @property
    def default_preset(self) -> str:
        return str(self.manifest.get("default_sample_preset") or "")

    def presets(self) -> dict[str, dict[str, Any]]:
        """Released sample presets plus those the checkpoint's components declared."""
        return {**SAMPLE_PRESETS, **(self.manifest.get("sample_presets") or {})}

    def sample_config(
        self,
        preset: str | None = None,
        steps: int | None = None,
        schedule: TimeAware | None = None,
        cfg: TimeAware | None = None,
        motion: TimeAware | None = None,
        neg_motion: TimeAware | None = None,
        time_shift: float | None = None,
        renorm: float | None = None,
    ) -> SampleConfig:
        """A preset (by name; default: the manifest's) with overrides, checked against the built scales."""
        name = preset if preset is not None else self.default_preset
        known = self.presets()
        if name not in known:
            if preset is None and schedule is not None:
                base: dict[str, Any] = {}
            else:
                raise ScheduleError(f"unknown sample preset {name!r}; known presets: {sorted(known)}")
        else:
            base = dict(known[name])
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
        """(f, h, w) of the latent for a video of frames x height x width pixels (components' latent spec)."""
        return self._latent.latent_shape(frames, height, width)

    def noise(self, batch: int, frames: int, height: int, width: int, seed: int) -> torch.Tensor:
        """The initial noise `generate` uses for these sizes and seed (reproducible with `make_noise`)."""
        return make_noise((batch, self._latent.channels, *self.latent_shape(frames, height, width)), seed)

    def _encoder(self):
        if self._text_encoder is None:
            self._text_encoder = components.load_text_encoder(self.engine_dir)
            if self._text_encoder is None:
                raise TextEncoderError(
                    f"the engine directory {str(self.engine_dir)!r} has no text encoder (components.json names none): "
                    "pass caption features (cap_feats / cap_mask) instead of a prompt"
                )
        return self._text_encoder

    def _encode(self, prompts: list[str]) -> Conditioning:
        feats, mask = self._encoder().encode(prompts)
        if feats.shape[-1] != self.config.cap_feat_dim:
            raise TextEncoderError(
                f"the text encoder gives {feats.shape[-1]}-wide features, the model takes {self.config.cap_feat_dim}"
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

    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[str] | None = None,
        *,
        negative_prompt: str | Sequence[str] = "",
        cap_feats: torch.Tensor | None = None,
        cap_mask: torch.Tensor | None = None,
        neg_cap_feats: torch.Tensor | None = None,
        neg_cap_mask: torch.Tensor | None = None,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        preset: str | None = None,
        schedule: TimeAware | None = None,
        cfg: TimeAware | None = None,
        motion: TimeAware | None = None,
        neg_motion: TimeAware | None = None,
        time_shift: float | None = None,
        renorm: float | None = None,
        seed: int = 0,
        noise: torch.Tensor | None = None,
        progress: bool = True,
        decode: bool = True,
    ) -> GenerationResult:
        """Sample videos: a prompt (or caption features), sizes in pixels, a named preset or explicit schedule.

        `schedule` is a time-aware patch combo (`"1x2"` or `["2x4", [0.1, "2x2"], [0.3, "1x2"]]`); `cfg`, `motion`,
        `neg_motion` are time-aware too. Guidance (cfg > 0) runs the negative condition (`negative_prompt`,
        default "", or `neg_cap_feats`) in the same batch. Sizes default to the largest served shape.
        """
        start = time.perf_counter()
        config = self.sample_config(preset, steps, schedule, cfg, motion, neg_motion, time_shift, renorm)
        if cap_feats is not None:
            if prompt is not None:
                raise InputError("pass either a prompt or caption features (cap_feats), not both")
            pos = self._features(cap_feats, cap_mask, "cap_feats")
        elif prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not prompts:
                raise InputError("prompt is an empty list")
            pos = self._encode(prompts)
        else:
            raise InputError("generate needs a prompt or caption features (cap_feats)")
        batch = pos.cap_feats.shape[0]
        if pos.cap_feats.shape[-1] != self.config.cap_feat_dim:
            raise InputError(
                f"cap_feats are {pos.cap_feats.shape[-1]} wide, the model takes {self.config.cap_feat_dim}"
            )

        neg = None
        guided = any(float(v) > 0 for v in _time_aware_values(config.cfg))
        if guided:
            if neg_cap_feats is not None:
                neg = self._features(neg_cap_feats, neg_cap_mask, "neg_cap_feats")
            else:
                negs = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
                try:
                    neg = self._encode(negs)
                except TextEncoderError as exc:
                    raise InputError(
                        f"guidance (cfg > 0) needs a negative condition: pass neg_cap_feats, or cfg=0 ({exc})"
                    ) from None
            if neg.cap_feats.shape[0] != batch:
                raise InputError(f"{neg.cap_feats.shape[0]} negative conditions for {batch} prompts")

        if noise is None:
            f_def, h_def, w_def = self._default_size()
            frames, height, width = frames or f_def, height or h_def, width or w_def
            grid = self.latent_shape(frames, height, width)
            self._check_grid(grid, config, batch * (2 if guided else 1), pos, neg)
            z = make_noise((batch, self._latent.channels, *grid), seed)
        else:
            z = noise.float()
            if z.dim() != 5 or z.shape[0] != batch or z.shape[1] != self._latent.channels:
                raise InputError(f"noise must be [{batch}, {self._latent.channels}, f, h, w], got {tuple(z.shape)}")
            self._check_grid(tuple(z.shape[2:]), config, batch * (2 if guided else 1), pos, neg)

        used: list[str] = []
        latents = sample_euler(
            self.velocity,
            z,
            pos,
            neg,
            config,
            progress=progress,
            callback=lambda k, t, combo: used.append(combo),
            patch_combos=self.patch_combos,
        )
        video = None
        if decode:
            decoder = components.load_decoder(self.engine_dir)
            if decoder is not None:
                video = decoder.decode(latents / self._latent.scale)
        return GenerationResult(
            latents=latents,
            frames=video,
            config=config,
            seed=int(seed),
            backend=self.backend_name,
            seconds=time.perf_counter() - start,
            steps=used,
        )

    def _default_size(self) -> tuple[int, int, int]:
        served = [s for p in self.profiles.values() for s in p.served]
        if not served:
            raise InputError("give frames, height and width: the manifest lists no served shape")
        best = max(served, key=lambda s: s["tokens"])
        return int(best["frames"]), int(best["height"]), int(best["width"])

    def _check_grid(
        self, grid: Sequence[int], config: SampleConfig, batch: int, pos: Conditioning, neg: Conditioning | None
    ) -> None:
        """Before any work: every scheduled scale can take this latent grid, batch and caption length."""
        length = max(pos.cap_feats.shape[1], 0 if neg is None else neg.cap_feats.shape[1])
        f, h, w = (int(g) for g in grid)
        for combo in config.combos():
            pf, p = parse_patch_combo(combo)
            try:
                n = scale_tokens((f, h, w), pf, p)
            except InputError as exc:
                raise InputError(f"unsupported resolution: latent grid {f}x{h}x{w} for scale {combo}: {exc}") from None
            self.profiles[combo].select(batch, n, int(length))


def _time_aware_values(value: TimeAware) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [value[0], *[v for _, v in value[1:]]]
    return [value]
