"""Build TensorRT 10 plans from the per-scale ONNX graphs (Builder, OnnxParser, optimization profiles, timing cache).

One plan per patch size, with one optimization profile per served token range (`profiles.ScaleProfile`).
Plans are weight-stripped and refittable (`STRIP_PLAN` + `REFIT_IDENTICAL`): the weights stay in the shared
`weights.bin` and are refitted at load (`lumina_rt.engines.tensorrt_engine`). Precision: "fp32" clears TF32
(TF32 matmuls would miss the 1e-5 parity bound), "fp16" / "bf16" set the builder flag of that name (the graph
stays float32 at its inputs and outputs). One timing cache file is shared by every build in the directory.

TensorRT is imported lazily and is not installable on the CPU development machines: this code is type-checked
against `tensorrt-stubs` (tools/typecheck_trt.sh) and runs only where TensorRT and a GPU exist.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lumina_rt.engines.tensorrt_engine import require_tensorrt, trt_logger
from lumina_rt.errors import ConfigError, EngineError
from lumina_rt.files import atomic_write
from lumina_rt.tolerances import PRECISIONS

logger = logging.getLogger(__name__)

# Bump when the builder settings below change: part of the engine cache key.
BUILD_FORMAT = 1

InputRanges = dict[str, list[list[int]]]  # input name -> [min shape, opt shape, max shape]


def build_plan(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    profiles: list[InputRanges],
    precision: str = "fp32",
    timing_cache_path: str | os.PathLike | None = None,
    workspace_bytes: int | None = None,
    strip_weights: bool = True,
) -> dict[str, Any]:
    """Parse `onnx_path`, build a serialized plan with one optimization profile per entry of `profiles`.

    Returns what the manifest records about the build. Raises EngineError naming the parser / builder failure.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if not profiles:
        raise ConfigError("a TensorRT build needs at least one optimization profile")
    require_tensorrt()
    import tensorrt as trt

    log = trt_logger()
    builder = trt.Builder(log)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT's ONNX parser rejects {str(onnx_path)!r}: {errors}")

    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    elif precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.set_flag(trt.BuilderFlag.BF16)
    if strip_weights:
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
        config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)

    cache_file = Path(timing_cache_path) if timing_cache_path is not None else None
    cache_bytes = cache_file.read_bytes() if cache_file is not None and cache_file.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, False):
        logger.warning("TensorRT refused the timing cache %s; building without it", cache_file)

    for ranges in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in ranges.items():
            profile.set_shape(name, trt.Dims(lo), trt.Dims(opt), trt.Dims(hi))
        if config.add_optimization_profile(profile) < 0:
            raise EngineError(f"TensorRT rejects the optimization profile {ranges}")

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {str(onnx_path)!r} (see the log above)")
    plan = Path(plan_path)
    atomic_write(plan, bytes(memoryview(serialized)))
    if cache_file is not None:
        updated = config.get_timing_cache()
        if updated is not None:
            atomic_write(cache_file, bytes(memoryview(updated.serialize())))
    return {
        "tensorrt": str(trt.__version__),
        "precision": precision,
        "profiles": len(profiles),
        "stripped": strip_weights,
        "build_format": BUILD_FORMAT,
    }
