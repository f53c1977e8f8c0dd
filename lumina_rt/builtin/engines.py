"""The built-in model's engines, built on first use into the cache (LUMINA_RT_CACHE, ~/.cache/lumina_rt)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lumina_rt.builtin import BUILTIN_SHAPES, builtin_dir, builtin_v2a_source
from lumina_rt.engines.profiles import ServeShapes
from lumina_rt.export.build_engines import build

logger = logging.getLogger(__name__)


def builtin_engines(precision: str = "fp32") -> Path:
    """Engines of the built-in model (and of its sound model, when shipped), built on first use into the cache
    (LUMINA_RT_CACHE, ~/.cache/lumina_rt).

    fp32: the best target here (TensorRT, else ONNX, else torch); bf16: torch engines (a CPU with native bf16
    arithmetic, or a GPU), in their own folder.
    """
    cache = Path(os.environ.get("LUMINA_RT_CACHE", Path.home() / ".cache" / "lumina_rt"))
    out = cache / "engines" / ("builtin" if precision == "fp32" else f"builtin-{precision}")
    target = "auto" if precision == "fp32" else "torch"
    shapes = ServeShapes(**BUILTIN_SHAPES)
    report = build(builtin_dir(), out, target=target, precision=precision, shapes=shapes, v2a=builtin_v2a_source())
    if report.changed:
        logger.info("built the built-in model's engines in %s (%.0f s)", out, report.seconds)
    return out
