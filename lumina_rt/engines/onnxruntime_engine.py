"""ONNX Runtime engines: one session per patch size, all sharing one copy of the weights.

Sharing (measured in docs/engines.md): the weight store is read once; each large initializer becomes one
`OrtValue` over that buffer (no copy on CPU), handed to every session with `SessionOptions.add_initializer`.
Two more things would otherwise multiply memory by the number of scales, and are turned off or shared:
- weight prepacking (each session would keep its own re-laid-out copy of every MatMul weight):
  `session.disable_prepacking`;
- per-session activation arenas: sessions use one process-wide arena (`create_and_register_allocator` +
  `session.use_env_allocators`); only one scale runs at a time, so one arena serves all.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from lumina_rt.engines.base import Backend, EngineFiles
from lumina_rt.engines.weights import WeightStore
from lumina_rt.errors import BackendUnavailableError, EngineError

logger = logging.getLogger(__name__)

INPUT_NAMES = ("tokens", "cos", "sin", "t", "cap_feats", "cap_mask", "motion")
OUTPUT_NAME = "velocity"
_ENV_ALLOCATOR = False


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(f"ONNX Runtime is not installed (pip install onnxruntime): {exc}") from None
    return onnxruntime


def version() -> str | None:
    try:
        return import_onnxruntime().__version__
    except BackendUnavailableError:
        return None


def cuda_unavailable_reason() -> str | None:
    """None when ONNX Runtime can run on a CUDA GPU here, else why not."""
    try:
        ort = import_onnxruntime()
    except BackendUnavailableError as exc:
        return str(exc)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    if not torch.cuda.is_available():  # onnxruntime-gpu lists the provider on machines without a GPU
        return "no CUDA GPU"
    return None


def _register_env_allocator(ort) -> bool:
    """One process-wide CPU arena for every session that opts in (idempotent)."""
    global _ENV_ALLOCATOR
    if not _ENV_ALLOCATOR:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _ENV_ALLOCATOR = True
        except Exception as exc:  # an allocator registered by someone else is fine; a missing API is not fatal
            logger.debug("could not register a shared ONNX Runtime arena: %s", exc)
            _ENV_ALLOCATOR = "already registered" in str(exc).lower()
    return bool(_ENV_ALLOCATOR)


class SharedInitializers:
    """OrtValues over the weight store, created once and added to every session (CPU: zero-copy views)."""

    def __init__(self, store: WeightStore, device: str = "cpu"):
        self.ort = import_onnxruntime()
        self.store = store
        self.device = device
        self._values: dict[str, object] = {}

    def value(self, name: str):
        v = self._values.get(name)
        if v is None:
            arr = self.store.array(name)
            if self.device == "cpu":
                v = self.ort.OrtValue.ortvalue_from_numpy(arr)
            else:
                v = self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), "cuda", 0)
            self._values[name] = v
        return v


def external_initializers(onnx_path: str | os.PathLike) -> list[str]:
    """Names of the initializers a graph keeps in the shared weight file."""
    import onnx

    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common base class
        raise EngineError(f"ONNX graph {str(onnx_path)!r} is corrupt: {exc}") from None
    return [i.name for i in proto.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]


class OrtScaleEngine:
    """One patch size as an ONNX Runtime session."""

    def __init__(
        self,
        combo: str,
        onnx_path: str | os.PathLike,
        shared: SharedInitializers,
        cuda: bool = False,
        threads: int | None = None,
    ):
        ort = shared.ort
        self.combo = combo
        self.path = Path(onnx_path)
        self.cuda = cuda
        so = ort.SessionOptions()
        so.add_session_config_entry("session.disable_prepacking", "1")
        if not cuda and _register_env_allocator(ort):
            so.add_session_config_entry("session.use_env_allocators", "1")
        if threads:
            so.intra_op_num_threads = int(threads)
        so.log_severity_level = 3
        self.shared = shared
        self.external = external_initializers(self.path)
        for name in self.external:
            so.add_initializer(name, shared.value(name))
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as exc:  # ORT raises its own Fail / InvalidGraph types
            raise EngineError(
                f"ONNX Runtime cannot load the engine of scale {combo} ({str(self.path)!r}): {exc}"
            ) from None
        names = tuple(i.name for i in self.session.get_inputs())
        if names != INPUT_NAMES:
            raise EngineError(f"engine {str(self.path)!r} takes inputs {names}, expected {INPUT_NAMES}")

    def run(
        self,
        tokens: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion: torch.Tensor,
        profile_index: int = 0,
    ) -> torch.Tensor:
        def f32(x: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())

        feeds = {
            "tokens": f32(tokens),
            "cos": f32(cos),
            "sin": f32(sin),
            "t": f32(t),
            "cap_feats": f32(cap_feats),
            "cap_mask": np.ascontiguousarray(cap_mask.detach().to("cpu", torch.int64).numpy()),
            "motion": f32(motion),
        }
        (out,) = self.session.run([OUTPUT_NAME], feeds)
        return torch.from_numpy(out).to(tokens.device)


def unavailable_reason(engines: EngineFiles, backend: Backend) -> str | None:
    """None when ONNX Runtime can run these engines on the backend's device (the backend table: engines/__init__.py).

    The graphs are float32 whatever the build's precision (which applies to TensorRT plans and torch engines).
    """
    if any(not s.get("onnx") for s in engines.manifest["scales"].values()):
        return "the engine directory has no ONNX graphs (built with --target torch; rebuild with --target onnx)"
    if version() is None:
        return "ONNX Runtime is not installed (pip install 'lumina-rt[onnx]')"
    return cuda_unavailable_reason() if backend.device == "cuda" else None


def load(engines: EngineFiles, backend: Backend, combos: list[str]) -> dict[str, OrtScaleEngine]:
    """Sessions for these combos, all sharing one set of OrtValues over the engine set's weight store."""
    reason = unavailable_reason(engines, backend)
    if reason:
        raise BackendUnavailableError(f"backend {backend.name!r} cannot run: {reason}")
    cuda = backend.device == "cuda"
    shared = engines.shared(
        f"ort-initializers-{backend.device}", lambda: SharedInitializers(engines.weights(), backend.device)
    )
    scales = engines.manifest["scales"]
    return {
        combo: OrtScaleEngine(
            combo, engines.file(scales[combo]["onnx"], f"ONNX graph of scale {combo}"), shared, cuda, engines.threads
        )
        for combo in combos
    }


def load_files(
    engine_dir: str | os.PathLike, onnx_files: dict[str, str], store: WeightStore, threads: int | None = None
) -> dict[str, OrtScaleEngine]:
    """CPU sessions for {combo: relative ONNX path} sharing `store`, without a manifest (the build's check stage)."""
    shared = SharedInitializers(store, "cpu")
    return {
        combo: OrtScaleEngine(combo, Path(engine_dir) / rel, shared, threads=threads)
        for combo, rel in onnx_files.items()
    }
