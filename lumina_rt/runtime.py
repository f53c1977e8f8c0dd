"""`Runtime(engine_dir)`: the public API over an engine directory — an `EngineSet` and a `Pipeline` around it.

It hands out its two parts rather than forwarding their members one by one:

- `runtime.engines` (`EngineSet`, engines/engine_set.py): the manifest, the engine backend of each scale (measured
  ranking), and one velocity function over all scales (`velocity`, `forward_list`, `check_config`, ...);
- `runtime.pipeline` (`Pipeline`, lumina_rt/pipeline.py): prompts -> noise -> sampler -> decoder -> video, for any
  velocity function (`sample_config`, `presets`, `noise`, `audio_stage`, ...; the reference model's goes through the
  same pipeline: `Pipeline.from_checkpoint`).

What it does itself: the wiring — the process mesh with `parallel`, the velocity the pipeline samples with (over
the mesh or the engine set's own), and with a V2A engine in the directory (manifest "v2a") the audio stage of
`generate(..., audio=True)`, loaded on first use (`Soundtrack` over `engines.v2a_engine.load_v2a`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lumina_rt.distributed import ParallelConfig
from lumina_rt.engines.engine_set import EngineSet
from lumina_rt.pipeline import GenerationResult, Pipeline

if TYPE_CHECKING:
    from lumina_rt.v2a.soundtrack import Soundtrack

__all__ = ["Runtime"]


class Runtime:
    """Engines of one engine directory (`.engines`) and the pipeline that generates with them (`.pipeline`)."""

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
        self._mesh = None
        velocity = None
        if parallel is not None:
            from lumina_rt.distributed import init_mesh
            from lumina_rt.engines.parallel import parallel_velocity

            self._mesh = init_mesh(parallel)
            if backend == "auto":
                backend = "torch-cuda" if self._mesh.device_type == "cuda" else "torch"
        self.engines = EngineSet(engine_dir, backend=backend, scales=scales, verify=verify, threads=threads)
        if self._mesh is not None:
            velocity = parallel_velocity(self.engines, self._mesh)
        self._velocity = velocity if velocity is not None else self.engines
        self._v2a_options = (backend, verify, threads)
        audio = self._sound_stage if self.engines.manifest.get("v2a") else None  # loaded on first `audio=True`
        self.pipeline = Pipeline.from_engines(self.engines, velocity=velocity, audio=audio)

    @classmethod
    def builtin(cls, precision: str = "fp32", *, audio: bool = False, **options: Any) -> Runtime:
        """The built-in model's runtime, in one line: its engines are built on first use into the cache
        (LUMINA_RT_CACHE, ~/.cache/lumina_rt) and reused after. Like `lumina-rt generate --builtin`, it makes 8x32x32
        videos by default and `GenerationResult.save` upscales them 4x, bicubic (BUILTIN_SCALE, BUILTIN_UPSCALE). Its
        sound model's engine is built with `audio=True`, else on the first `generate(..., audio=True)`. `options`:
        `Runtime`'s (backend, parallel, ...).
        """
        from lumina_rt.builtin import BUILTIN_DEFAULT_SIZE, BUILTIN_SCALE, BUILTIN_UPSCALE
        from lumina_rt.builtin.engines import builtin_engines

        engine_dir = builtin_engines(precision, audio=audio)
        runtime = cls(engine_dir, **options)
        pipeline = runtime.pipeline
        pipeline.default_size, pipeline.default_scale, pipeline.builtin = BUILTIN_DEFAULT_SIZE, BUILTIN_SCALE, True
        pipeline.default_upscale = BUILTIN_UPSCALE
        if not runtime.engines.manifest.get("v2a"):

            def sound() -> Soundtrack:  # first generate(audio=True): build the sound model's engine, then load it
                from lumina_rt.engines.manifest import read_manifest

                builtin_engines(precision, audio=True)
                return runtime._sound_stage(read_manifest(engine_dir))

            pipeline.use_audio(sound)
        return runtime

    def _sound_stage(self, manifest: dict[str, Any] | None = None) -> Soundtrack:
        """The audio stage over the directory's V2A engine (`pipeline.audio_stage()` loads it once); `manifest`: the
        directory's manifest when it changed after loading (the built-in model's sound engine built on first use)."""
        from lumina_rt.engines.v2a_engine import load_v2a
        from lumina_rt.v2a.soundtrack import Soundtrack

        backend, verify, threads = self._v2a_options
        manifest = self.engines.manifest if manifest is None else manifest
        return Soundtrack(load_v2a(self.engines.engine_dir, manifest, backend, verify, threads))

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs (rank 0, or the only process)."""
        return self._mesh is None or self._mesh.get_rank() == 0

    def parity_target(self) -> Any:
        """What `lumina_rt.parity.run_parity` checks (a `ParityTarget`): these engines' velocity and forward_list
        (over the mesh with `parallel`)."""
        return self._velocity

    def generate(self, prompt: str | Sequence[str] | None = None, **kwargs: Any) -> GenerationResult:
        """Generate videos with these engines: see `Pipeline.generate` for the arguments."""
        return self.pipeline.generate(prompt, **kwargs)
