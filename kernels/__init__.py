"""Fused kernels of lumina_rt, installed as `lumina_rt.kernels`.

- `registry.TRITON_IMPLS`: Triton kernels (GPU; CPU with TRITON_INTERPRET=1 set before importing them);
- `cpu.CPU_IMPLS`: the C++ extension `lumina_rt._C` (pybind11 + OpenMP).

One op family per module (`modulate`, `rope`, `patchify`), each with its kernel, launcher and `*_ref` math;
`attention` holds the math of the gated attention (`gated_attention_ref`), whose kernel is C++ only
(csrc/attention.cpp; GPUs run PyTorch's fused SDPA).
Importing this package imports neither Triton nor the extension.
"""
