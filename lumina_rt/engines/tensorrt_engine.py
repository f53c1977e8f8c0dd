"""TensorRT 10 engines: one weight-stripped plan per patch size, refitted from the shared weights at load.

Plans are built (export/tensorrt_build.py) with `STRIP_PLAN` + `REFIT_IDENTICAL`, so the files hold no
weights; at load each engine is refitted from its ONNX graph, whose initializers live in the one shared
`weights.bin` (`OnnxParserRefitter.refit_from_file`). All engines' execution contexts use one user-managed
device scratch buffer (`ExecutionContextAllocationStrategy.USER_MANAGED`), sized for the largest engine: only one
scale runs at a time. Each deserialized engine still holds its own device copy of the weights (TensorRT has no
way to share weights between engines); see docs/engines.md.

TensorRT is imported lazily: nothing here runs, or is imported, on a machine without it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lumina_rt.engines.base import Backend, EngineFiles
from lumina_rt.errors import BackendUnavailableError, EngineError

if TYPE_CHECKING:
    import tensorrt as trt


logger = logging.getLogger(__name__)

INPUT_NAMES = ("tokens", "cos", "sin", "t", "cap_feats", "cap_mask", "motion")
OUTPUT_NAME = "velocity"


def require_tensorrt() -> None:
    """Return if TensorRT can be imported; BackendUnavailableError("TensorRT is not installed ...") otherwise.

    Callers then `import tensorrt as trt` themselves, so the module is typed from the stubs where type-checked.
    """
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TensorRT is not installed (the tensorrt package with libnvinfer is needed): {exc}"
        ) from None
    if not hasattr(tensorrt, "Builder"):  # `pip install tensorrt-stubs` leaves an importable namespace package
        raise BackendUnavailableError(
            "TensorRT is not installed: `import tensorrt` finds only type stubs (tensorrt-stubs), not the library"
        )


def version() -> str | None:
    try:
        require_tensorrt()
    except BackendUnavailableError:
        return None
    import tensorrt as trt

    return str(trt.__version__)


def gpu_info() -> dict[str, str] | None:
    """{name, arch} of the current CUDA GPU ("sm_90"), or None without one."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "arch": f"sm_{major}{minor}"}


def unavailable_reason(engines: EngineFiles | None = None, backend: Backend | None = None) -> str | None:
    """None when TensorRT engines can be built and run here, else why not; with `engines`, also their plans."""
    if engines is not None:
        return backend_unavailable_reason(engines)
    try:
        require_tensorrt()
    except BackendUnavailableError as exc:
        return str(exc)
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU and none is available"
    return None


_LOGGER: list[trt.ILogger] = []


def trt_logger() -> trt.ILogger:
    """One TensorRT logger for the process (warnings and errors)."""
    if not _LOGGER:
        require_tensorrt()
        import tensorrt as trt

        _LOGGER.append(trt.Logger(trt.Logger.WARNING))
    return _LOGGER[0]


class SharedScratch:
    """One device buffer for the activations of every engine's execution context (one scale runs at a time)."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def ensure(self, nbytes: int) -> torch.Tensor:
        if self.buffer is None or self.buffer.numel() < nbytes:
            self.buffer = torch.empty(max(nbytes, 1), dtype=torch.uint8, device="cuda")
        return self.buffer


def deserialize(plan_path: Path, onnx_path: Path | None, combo: str) -> trt.ICudaEngine:
    """Deserialize a plan; with `onnx_path`, refit its stripped weights from the graph's (shared) initializers."""
    require_tensorrt()
    import tensorrt as trt

    runtime = trt.Runtime(trt_logger())
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise EngineError(
            f"TensorRT cannot deserialize the engine of scale {combo} ({str(plan_path)!r}): corrupt, or built by "
            "another TensorRT version or GPU; rebuild with `lumina-rt build`"
        )
    if onnx_path is not None:
        refitter = trt.Refitter(engine, trt_logger())
        parser_refitter = trt.OnnxParserRefitter(refitter, trt_logger())
        if not parser_refitter.refit_from_file(str(onnx_path)):
            errors = [str(parser_refitter.get_error(i)) for i in range(parser_refitter.num_errors)]
            raise EngineError(f"cannot refit the engine of scale {combo} from {str(onnx_path)!r}: {errors}")
        missing = refitter.get_missing_weights()
        if missing:
            raise EngineError(f"engine of scale {combo} still lacks weights after refit: {missing[:5]}")
        if not refitter.refit_cuda_engine():
            raise EngineError(f"TensorRT failed to refit the engine of scale {combo}")
    return engine


class TrtScaleEngine:
    """One patch size as a TensorRT engine with one optimization profile per served token range."""

    def __init__(self, combo: str, engine: trt.ICudaEngine, scratch: SharedScratch):
        require_tensorrt()
        import tensorrt as trt

        self.combo = combo
        self.engine = engine
        self.scratch = scratch
        self.context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise EngineError(f"TensorRT could not create an execution context for scale {combo}")
        self.memory_bytes = int(engine.device_memory_size_v2)
        scratch.ensure(self.memory_bytes)
        self.profile = -1
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if sorted(names) != sorted([*INPUT_NAMES, OUTPUT_NAME]):
            raise EngineError(f"engine of scale {combo} has tensors {names}, expected {[*INPUT_NAMES, OUTPUT_NAME]}")

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
        stream = torch.cuda.current_stream()
        ctx = self.context
        if profile_index != self.profile:
            if not ctx.set_optimization_profile_async(profile_index, stream.cuda_stream):
                raise EngineError(f"engine of scale {self.combo} has no optimization profile {profile_index}")
            self.profile = profile_index
        buffer = self.scratch.ensure(self.memory_bytes)
        ctx.set_device_memory(buffer.data_ptr(), buffer.numel())
        feeds = {
            "tokens": tokens,
            "cos": cos,
            "sin": sin,
            "t": t,
            "cap_feats": cap_feats,
            "motion": motion,
        }
        inputs = {k: v.to("cuda", torch.float32).contiguous() for k, v in feeds.items()}
        inputs["cap_mask"] = cap_mask.to("cuda", torch.int64).contiguous()
        for name, x in inputs.items():
            if not ctx.set_input_shape(name, tuple(x.shape)):
                raise EngineError(f"engine of scale {self.combo} refuses {name} of shape {tuple(x.shape)}")
            ctx.set_tensor_address(name, x.data_ptr())
        dims = ctx.get_tensor_shape(OUTPUT_NAME)
        out = torch.empty([dims[i] for i in range(len(dims))], dtype=torch.float32, device="cuda")
        ctx.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"TensorRT failed to run the engine of scale {self.combo}")
        return out.to(tokens.device)


def backend_unavailable_reason(engines: EngineFiles) -> str | None:
    """None when these engines' TensorRT plans can run here."""
    if any(not s.get("engine") for s in engines.manifest["scales"].values()):
        return f"the engines were built for target {engines.manifest['target']} (no TensorRT plans in the manifest)"
    reason = unavailable_reason()
    if reason:
        return reason
    built = engines.manifest["runtime"].get("version")
    if built != version():
        return f"plans were built by TensorRT {built}, this is TensorRT {version()}"
    arch = (engines.manifest.get("gpu") or {}).get("arch")
    here = (gpu_info() or {}).get("arch")
    if arch != here:
        return f"plans were built for GPU {arch}, this GPU is {here}"
    return None


def load(engines: EngineFiles, backend: Backend, combos: list[str]) -> dict[str, TrtScaleEngine]:
    """Engines for these combos, refitted from the shared weights, sharing one scratch buffer."""
    reason = backend_unavailable_reason(engines)
    if reason:
        raise BackendUnavailableError(f"backend 'tensorrt' cannot run: {reason}")
    scratch = engines.shared("tensorrt-scratch", SharedScratch)
    scales = engines.manifest["scales"]
    out = {}
    for combo in combos:
        entry = scales[combo]["engine"]
        plan = engines.file(entry, f"TensorRT plan of scale {combo}")
        onnx_path = engines.file(scales[combo].get("onnx"), f"ONNX graph of scale {combo}")
        engines.weights()
        out[combo] = TrtScaleEngine(
            combo, deserialize(plan, onnx_path if entry.get("stripped") else None, combo), scratch
        )
    return out
