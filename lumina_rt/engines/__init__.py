"""The serving side of an engine directory: per-patch-size engines behind one table of engine backends.

An *engine backend* is how one scale's velocity is computed from an engine directory. Each lives in a module that
offers the same two functions, looked up through `BACKENDS` (no if/elif anywhere):

- `unavailable_reason(engines, backend) -> str | None`: why this backend cannot run here (None: it can);
- `load(engines, backend, combos) -> {combo: ScaleEngine}`: its engines for these patch combos.

`engines` is the `EngineSet` asking (engine_set.py), seen through `EngineFiles` (base.py): the manifest, the
verified files, the shared weight store and a place for state the scales of one backend share. The types the
backend modules share live in base.py, so that they never import this table. Backends:

- `tensorrt`: TensorRT 10 plans (GPU);
- `onnxruntime-cuda` / `onnxruntime`: ONNX Runtime sessions on the GPU / CPU;
- `torch-triton`: the reference model on the GPU with the Triton fused kernels;
- `torch-cuda`: the reference model on the GPU with PyTorch's own ops (no Triton needed);
- `torch-cpu-fused`: the reference model on the CPU with the C++ fused kernels (csrc/);
- `torch`: the reference model on the CPU with PyTorch's own ops;
- `torch-compiled-cuda` / `torch-compiled`: the reference model through torch.compile (inductor) on the GPU / CPU
  (compiled_engine.py; compiled per served shape on first call, cached across runs).

Other names: a *kernel backend* (ops.py: torch / triton / cpu-fused) is what a torch engine runs its fused
ops with; a *build target* (`lumina-rt build --target`) is which files a build writes (torch / onnx / tensorrt).
"""

from __future__ import annotations

from lumina_rt.engines.base import Backend, EngineFiles, ScaleEngine

__all__ = ["BACKENDS", "UNMEASURED_ORDER", "Backend", "EngineFiles", "ScaleEngine"]


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("tensorrt", "lumina_rt.engines.tensorrt_engine", "cuda"),
        Backend("onnxruntime-cuda", "lumina_rt.engines.onnxruntime_engine", "cuda"),
        Backend("torch-triton", "lumina_rt.engines.torch_engine", "cuda", kernels="triton"),
        Backend("torch-cuda", "lumina_rt.engines.torch_engine", "cuda", kernels="torch"),
        Backend("torch-compiled-cuda", "lumina_rt.engines.compiled_engine", "cuda", kernels="torch", compiled=True),
        Backend("onnxruntime", "lumina_rt.engines.onnxruntime_engine", "cpu"),
        Backend("torch-cpu-fused", "lumina_rt.engines.torch_engine", "cpu", kernels="cpu-fused"),
        Backend("torch", "lumina_rt.engines.torch_engine", "cpu", kernels="torch"),
        Backend("torch-compiled", "lumina_rt.engines.compiled_engine", "cpu", kernels="torch", compiled=True),
    )
}
# `auto` follows the ranking `lumina-rt build` measured (manifest "ranking"); this order only where there is none.
# A compiled backend comes after the eager backend of its device that always runs (torch-cuda, torch): it pays
# its compile time at the first call of every shape, so `auto` picks it only where a ranking measured it faster.
UNMEASURED_ORDER = tuple(BACKENDS)
