"""Importing optional third-party packages (transformers, diffusers) from a lumina_rt checkout.

The repository keeps its Triton kernels in a top-level `kernels/` folder (installed as `lumina_rt.kernels`). When the
checkout's root is on `sys.path` (`python -m ...` or pytest run from it), that folder shadows the unrelated `kernels`
distribution that recent transformers releases depend on, and `import transformers` fails inside its hub-kernel
integration. `unshadow_kernels()` imports the installed distribution first, when there is one.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_REPO_KERNELS = (Path(__file__).resolve().parent.parent / "kernels").resolve()


def unshadow_kernels() -> None:
    """Put the installed `kernels` distribution in `sys.modules` when the checkout's `kernels/` would shadow it."""
    if "kernels" in sys.modules:
        return
    spec = importlib.util.find_spec("kernels")
    if spec is None or spec.origin is None or Path(spec.origin).resolve().parent != _REPO_KERNELS:
        return
    others = [p for p in sys.path if (Path(p or ".").resolve() / "kernels").resolve() != _REPO_KERNELS]
    real = importlib.machinery.PathFinder.find_spec("kernels", others)
    if real is None or real.loader is None:
        return  # nothing installed under that name: transformers then sees no usable `kernels` (no version)
    module = importlib.util.module_from_spec(real)
    sys.modules["kernels"] = module
    try:
        real.loader.exec_module(module)
    except BaseException:
        del sys.modules["kernels"]
        raise


def import_optional(name: str) -> ModuleType:
    """`importlib.import_module(name)` after `unshadow_kernels()`; ImportError as usual when it is missing."""
    unshadow_kernels()
    return importlib.import_module(name)
