"""The built-in model's engines, built on first use into the cache (LUMINA_RT_CACHE, ~/.cache/lumina_rt)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from lumina_rt.builtin import BUILTIN_SHAPES, builtin_dir, builtin_v2a_source
from lumina_rt.engines.manifest import MANIFEST_FILE, read_manifest
from lumina_rt.engines.profiles import ServeShapes
from lumina_rt.errors import EngineError
from lumina_rt.export.build_engines import build

logger = logging.getLogger(__name__)


def builtin_engines(precision: str = "fp32", audio: bool = False) -> Path:
    """Engines of the built-in model, built on first use into the cache (LUMINA_RT_CACHE, ~/.cache/lumina_rt); its
    sound model's engine too with `audio` (first `--audio`), and kept once built.

    fp32: the best target here (TensorRT, else ONNX, else torch); bf16: torch engines (a CPU with native bf16
    arithmetic, or a GPU), in their own folder. A first build that is interrupted (Ctrl-C) leaves no folder behind.
    """
    cache = Path(os.environ.get("LUMINA_RT_CACHE", Path.home() / ".cache" / "lumina_rt"))
    out = cache / "engines" / ("builtin" if precision == "fp32" else f"builtin-{precision}")
    target = "auto" if precision == "fp32" else "torch"
    shapes = ServeShapes(**BUILTIN_SHAPES)
    fresh = not (out / MANIFEST_FILE).is_file()
    has_v2a = not fresh and bool(_manifest(out).get("v2a"))
    v2a = builtin_v2a_source() if audio or has_v2a else None
    try:
        report = build(builtin_dir(), out, target=target, precision=precision, shapes=shapes, v2a=v2a)
    except BaseException:
        if fresh:  # no half-built engine folder: the next run starts clean
            shutil.rmtree(out, ignore_errors=True)
        raise
    if report.changed:
        logger.info("built the built-in model's engines in %s (%.0f s)", out, report.seconds)
    else:
        logger.info("reusing the built-in model's engines in %s (nothing to build)", out)
    return out


def _manifest(out: Path) -> dict:
    try:
        return read_manifest(out)
    except EngineError:
        return {}
