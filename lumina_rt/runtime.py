"""`Runtime(engine_dir)`: the public API over an engine directory — an `EngineSet` and a `Pipeline` around it.

- `lumina_rt.engines.engine_set.EngineSet`: the manifest, the engine backend of each scale (measured ranking),
  and one velocity function over all scales;
- `lumina_rt.pipeline.Pipeline`: prompts -> noise -> sampler -> decoder -> video, for any velocity function
  (the reference model's goes through the same pipeline: `Pipeline.from_checkpoint`);
- with a V2A engine in the directory (manifest "v2a"), the audio stage of `generate(..., audio=True)`:
  `lumina_rt.v2a.soundtrack.Soundtrack` over `lumina_rt.engines.v2a_engine.load_v2a`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from lumina_rt.config import ModelConfig
from lumina_rt.distributed import ParallelConfig
from lumina_rt.engines import ScaleEngine
from lumina_rt.engines.engine_set import BACKEND_ENV, EngineSet
from lumina_rt.pipeline import GenerationResult, Pipeline, make_noise
from lumina_rt.sampling import SampleConfig

if TYPE_CHECKING:
    from lumina_rt.v2a.soundtrack import Soundtrack

__all__ = ["BACKEND_ENV", "GenerationResult", "ParallelConfig", "Runtime", "make_noise"]


class Runtime:
    """Engines of one engine directory and the pipeline that generates with them."""

    def __init__(
        self,
        engine_dir: str | os.PathLike,
        backend: str = "auto",
        scales: Sequence[str] | None = None,
        verify: bool = True,
        threads: int | None = None,
        parallel: ParallelConfig | None = None,
    ):
        """`parallel`: run under torchrun over a (cfg, sp) mesh (`lumina_rt.distributed`) with torch engines
        (backend "auto" picks torch-cuda on a GPU, else torch); every process returns the same result."""
        self.parallel = parallel
        self.mesh = None
        velocity = None
        if parallel is not None:
            from lumina_rt.distributed import init_mesh
            from lumina_rt.engines.parallel import parallel_velocity

            self.mesh = init_mesh(parallel)
            if backend == "auto":
                backend = "torch-cuda" if self.mesh.device_type == "cuda" else "torch"
        self.engines = EngineSet(engine_dir, backend=backend, scales=scales, verify=verify, threads=threads)
        if self.mesh is not None:
            velocity = parallel_velocity(self.engines, self.mesh)
        self._velocity = velocity if velocity is not None else self.engines
        self._v2a_options = (backend, verify, threads)
        audio = self.sound_stage if self.manifest.get("v2a") else None  # loaded on first `generate(audio=True)`
        self.pipeline = Pipeline.from_engines(self.engines, velocity=velocity, audio=audio)

    @classmethod
    def builtin(cls, precision: str = "fp32", *, audio: bool = False, **options: Any) -> Runtime:
        """The built-in model's runtime, in one line: its engines are built on first use into the cache
        (LUMINA_RT_CACHE, ~/.cache/lumina_rt) and reused after. Like `lumina-rt generate --builtin`, it makes 8x32x32
        videos by default and `GenerationResult.save` upscales them 4x. Its sound model's engine is built with
        `audio=True`, else on the first `generate(..., audio=True)`. `options`: `Runtime`'s (backend, parallel, ...).
        """
        from lumina_rt.builtin import BUILTIN_DEFAULT_SIZE, BUILTIN_SCALE
        from lumina_rt.builtin.engines import builtin_engines

        engine_dir = builtin_engines(precision, audio=audio)
        runtime = cls(engine_dir, **options)
        pipeline = runtime.pipeline
        pipeline.default_size, pipeline.default_scale, pipeline.builtin = BUILTIN_DEFAULT_SIZE, BUILTIN_SCALE, True
        if not runtime.engines.manifest.get("v2a"):

            def sound():  # noqa: ANN202 - first generate(audio=True): build the sound model's engine, then load it
                from lumina_rt.engines.manifest import read_manifest
                from lumina_rt.engines.v2a_engine import load_v2a
                from lumina_rt.v2a.soundtrack import Soundtrack

                builtin_engines(precision, audio=True)
                backend, verify, threads = runtime._v2a_options
                return Soundtrack(load_v2a(engine_dir, read_manifest(engine_dir), backend, verify, threads))

            pipeline.use_audio(sound)
        return runtime

    def sound_stage(self) -> Soundtrack:
        """The audio stage over the directory's V2A engine (`lumina_rt.v2a.soundtrack.Soundtrack`); EngineError when
        the directory has none."""
        from lumina_rt.engines.v2a_engine import load_v2a
        from lumina_rt.v2a.soundtrack import Soundtrack

        backend, verify, threads = self._v2a_options
        return Soundtrack(load_v2a(self.engine_dir, self.manifest, backend, verify, threads))

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs (rank 0, or the only process)."""
        return self.mesh is None or self.mesh.get_rank() == 0

    # ------------------------------------------------------------------ the engine set
    @property
    def engine_dir(self):
        return self.engines.engine_dir

    @property
    def manifest(self) -> dict[str, Any]:
        return self.engines.manifest

    @property
    def config(self) -> ModelConfig:
        return self.engines.config

    @property
    def patch_combos(self) -> tuple[str, ...]:
        return self.engines.patch_combos

    @property
    def backend_name(self) -> str:
        return self.engines.backend_name

    @property
    def backend_reasons(self) -> dict[str, str]:
        return self.engines.backend_reasons

    @property
    def weights_hash(self) -> str:
        return self.engines.weights_hash

    @property
    def loaded_scales(self) -> list[str]:
        return self.engines.loaded_scales

    def engine(self, combo: str) -> ScaleEngine:
        return self.engines.engine(combo)

    def check_config(self, config: ModelConfig) -> None:
        self.engines.check_config(config)

    def check_weights(self, weights_hash: str) -> None:
        self.engines.check_weights(weights_hash)

    def velocity(self, x, t, cap_feats, cap_mask, motion, combo: str) -> torch.Tensor:
        """See `EngineSet.velocity` (over the mesh with `parallel`)."""
        return self._velocity.velocity(x, t, cap_feats, cap_mask, motion, combo)

    def forward_list(self, items, t, cap_feats, cap_mask, motion, combo: str) -> list[torch.Tensor]:
        """See `EngineSet.forward_list` (over the mesh with `parallel`)."""
        return self._velocity.forward_list(items, t, cap_feats, cap_mask, motion, combo)

    def parity_target(self) -> Any:
        """What `lumina_rt.parity.run_parity` checks (a `ParityTarget`): these engines' velocity and forward_list."""
        return self._velocity

    # ------------------------------------------------------------------ the pipeline
    @property
    def default_preset(self) -> str:
        return self.pipeline.default_preset

    def presets(self) -> dict[str, dict[str, Any]]:
        return self.pipeline.presets()

    def sample_config(self, preset: str | None = None, **overrides: Any) -> SampleConfig:
        """See `Pipeline.sample_config`."""
        return self.pipeline.sample_config(preset, **overrides)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return self.pipeline.latent_shape(frames, height, width)

    def noise(self, batch: int, frames: int, height: int, width: int, seed: int) -> torch.Tensor:
        return self.pipeline.noise(batch, frames, height, width, seed)

    def generate(self, prompt: str | Sequence[str] | None = None, **kwargs: Any) -> GenerationResult:
        """Generate videos with these engines: see `Pipeline.generate` for the arguments."""
        return self.pipeline.generate(prompt, **kwargs)
