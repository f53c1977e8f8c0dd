"""What an engine backend module and the engine set agree on: `ScaleEngine`, `Backend`, `EngineFiles`.

A leaf of the engines package: the backend modules (torch_engine, onnxruntime_engine, tensorrt_engine) import
these types from here, the backend table (`BACKENDS` in the package's __init__) names those modules, and the engine
set (engine_set.py) satisfies `EngineFiles`; so no backend module imports the table or the engine set.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch

from lumina_rt.config import ModelConfig
from lumina_rt.engines.weights import WeightStore


class ScaleEngine(Protocol):
    """One patch size's velocity: inputs as the exported graph's (export/onnx_export.py)."""

    combo: str

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
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class Backend:
    """An engine backend: its module, device, (torch engines) the kernel backend its fused ops use, and whether it
    compiles on first call (its measured warm-up is reported as compile time)."""

    name: str
    module: str
    device: str
    kernels: str | None = None
    compiled: bool = False

    def impl(self) -> ModuleType:
        return importlib.import_module(self.module)


class EngineFiles(Protocol):
    """What a backend's `unavailable_reason` / `load` read from the engine set asking (`EngineSet` provides it)."""

    manifest: dict[str, Any]
    config: ModelConfig
    precision: str
    threads: int | None

    def file(self, entry: dict[str, Any] | None, what: str) -> Path:
        """A file the manifest names, checked against its recorded size (and SHA-256 when verifying)."""
        ...

    def weights(self) -> WeightStore:
        """The shared weight store, read once for every backend and scale."""
        ...

    def shared(self, key: str, make: Callable[[], Any]) -> Any:
        """State the scales of one backend share, made once."""
        ...
