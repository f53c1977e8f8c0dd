"""Per-patch-size engines behind one interface, one module per backend.

A backend module loads the engines of an engine directory (`lumina_rt.runtime.Runtime` reads the manifest and
picks the backend) and returns one `ScaleEngine` per patch combo. An engine computes one velocity evaluation on
patchified tokens; patchify, RoPE tables, profiles and the schedule stay in the runtime.

- `onnxruntime_engine`: ONNX Runtime sessions (CPU or CUDA) sharing one in-memory copy of the weights;
- `tensorrt_engine`: TensorRT 10 plans (weight-stripped, refitted from the shared weights at load);
- `torch_engine`: the reference model rebuilt from the same weight file (torch kernels, or Triton on CUDA).
"""

from __future__ import annotations

from typing import Protocol

import torch

BACKENDS = ("tensorrt", "onnxruntime-cuda", "torch-triton", "onnxruntime", "torch")


class ScaleEngine(Protocol):
    """One patch size's velocity: inputs as the exported graph's (see `lumina_rt.export.onnx_export`)."""

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
