"""Compiled torch engines: the torch engine's model through `torch.compile` (inductor), one graph per scale and shape.

Engine backends (`BACKENDS`, engines/__init__.py): `torch-compiled` (CPU) and `torch-compiled-cuda` (CUDA). Both
run the model the torch engines build from the engine directory's weight file (the same one, shared with them), in
the precision and on the device of `torch_engine.placement`.

- **CPU**: the C++ fused ops (csrc/) do not trace. Their wrappers hand `data_ptr()` addresses to pybind11, which
  dynamo cannot follow: it breaks the graph at every op and guards on the addresses (a recompile per call until
  its limit), and the compiled model returned NaN (measured, torch 2.13). So the compiled CPU engine runs PyTorch's
  own ops, which inductor fuses into C++ loops, except the gated attention: the C++ attention kernel (the one fused
  op inductor has no match for) runs as the opaque custom op `lumina_rt::cpu_gated_attention` where this CPU runs
  it (`_C.attention_supported`: AVX-512 fp32, AVX512-BF16 bf16), PyTorch's SDPA elsewhere.
- **CUDA**: PyTorch's own ops (inductor writes its own Triton kernels; the Triton fused ops are not used), SDPA
  restricted to the kernels the `torch-cuda` engine uses, compile mode "max-autotune-no-cudagraphs".

Compile mode: `LUMINA_RT_COMPILE_MODE` (one of `MODES`) overrides the default ("default" on the CPU,
"max-autotune-no-cudagraphs" on CUDA); "reduce-overhead" (or "max-autotune") captures a CUDA graph per served shape.
Shapes: a scale compiles on its first call, for that shape (batch, tokens, caption length); at a second shape once
more, with the dimensions that changed marked dynamic (torch's automatic dynamic shapes), a graph that then serves
every later shape. With CUDA graphs shapes are static: one graph (and one CUDA graph) per shape. At most
`RECOMPILE_LIMIT` graphs in all (past it torch runs a new shape uncompiled, with a warning).
Compiled artefacts are cached across runs by inductor's FX graph cache in `TORCHINDUCTOR_CACHE_DIR`, which this
module points at `inductor_cache_dir()` (LUMINA_RT_CACHE/inductor, ~/.cache/lumina_rt/inductor) unless it is set:
never the engine directory, which may be read-only. A compile that fails (no C++ compiler, no Triton) raises
`BackendUnavailableError` with torch's reason.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from lumina_rt import ops
from lumina_rt.engines import torch_engine
from lumina_rt.engines.base import Backend, EngineFiles
from lumina_rt.errors import BackendUnavailableError
from lumina_rt.kernels.attention import gated_attention_sdpa
from lumina_rt.model import MultiScaleNextDiT

logger = logging.getLogger(__name__)

MODE_ENV = "LUMINA_RT_COMPILE_MODE"
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_MODE = {"cpu": "default", "cuda": "max-autotune-no-cudagraphs"}
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # modes that capture CUDA graphs (static shapes only)
RECOMPILE_LIMIT = 64  # graphs of every scale together (they share a code object); torch's default is 8


def inductor_cache_dir() -> Path:
    """Where compiled artefacts are cached across runs: TORCHINDUCTOR_CACHE_DIR when set, else `inductor` in the
    lumina_rt cache folder (LUMINA_RT_CACHE, ~/.cache/lumina_rt)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    return Path(os.environ.get("LUMINA_RT_CACHE", Path.home() / ".cache" / "lumina_rt")) / "inductor"


def compile_mode(device: str) -> str:
    """The torch.compile mode of a compiled engine on `device` ("cpu" / "cuda"): LUMINA_RT_COMPILE_MODE or the
    default; a ValueError names a value that is not a mode."""
    mode = os.environ.get(MODE_ENV) or DEFAULT_MODE[device]
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV}={mode!r} is not a torch.compile mode; choose one of {list(MODES)}")
    return mode


# ------------------------------------------------------------------------------------------ the CPU attention op
@torch.library.custom_op(
    "lumina_rt::cpu_gated_attention",
    mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor? x_mask, Tensor yk, Tensor yv, Tensor y_mask, Tensor gate) -> Tensor",
)
def cpu_gated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    x_mask: torch.Tensor | None,
    yk: torch.Tensor,
    yv: torch.Tensor,
    y_mask: torch.Tensor,
    gate: torch.Tensor,
) -> torch.Tensor:
    """`ops.gated_attention` with the C++ kernel on CPU tensors (kernels/cpu.py), SDPA elsewhere -> [B, N, Hq*Dh]."""
    if q.device.type == "cpu":
        from lumina_rt.kernels import cpu

        return cpu.gated_attention(q, k, v, x_mask, yk, yv, y_mask, gate).to(q.dtype)
    return gated_attention_sdpa(q, k, v, x_mask, yk, yv, y_mask, gate, sdpa=ops.sdpa).to(q.dtype)


@cpu_gated_attention.register_fake
def _(q, k, v, x_mask, yk, yv, y_mask, gate):  # noqa: ANN001, ANN202 (the op's shapes for tracing)
    b, n, hq, dh = q.shape
    return q.new_empty(b, n, hq * dh)


@functools.cache
def _cpu_attention_kernel() -> bool:
    """Whether the C++ attention kernel runs here in fp32 or bf16 (else the compiled CPU engine keeps SDPA)."""
    try:
        from lumina_rt import _C
    except ImportError:
        return False
    return bool(_C.attention_supported(0) or _C.attention_supported(2))


@contextlib.contextmanager
def compiled_kernels(device: str) -> Iterator[None]:
    """The ops a compiled model runs on `device`: PyTorch's own, and on a CPU that runs the C++ attention kernel the
    gated attention as `cpu_gated_attention` (what a compiled engine calls its model in; bench/engine_overhead.py)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(ops.use_backend("torch"))
        if device == "cpu" and _cpu_attention_kernel():
            stack.enter_context(ops.replace_torch_impl("gated_attention", cpu_gated_attention))
        yield


# ------------------------------------------------------------------------------------------ availability
@functools.cache
def _cxx_reason() -> str | None:
    """Why inductor cannot build CPU kernels here (no C++ compiler, no Python headers), or None. The compiler is
    looked up as inductor does (CXX, else g++ / clang++ on macOS) without importing inductor (~1 s)."""
    name = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if not shutil.which(name):
        return f"no C++ compiler {name!r} for torch.compile's CPU code (set CXX to one)"
    include = sysconfig.get_paths().get("include")
    if not include or not (Path(include) / "Python.h").is_file():
        return f"no Python headers (Python.h in {include!r}) for torch.compile's CPU code: install python3-dev"
    return None


def unavailable_reason(engines: EngineFiles, backend: Backend) -> str | None:
    """None when this compiled backend can run here (the torch engine's reasons, then the compiler's)."""
    reason = torch_engine.unavailable_reason(engines, backend)
    if reason:
        return reason
    try:
        compile_mode(backend.device)
    except ValueError as exc:
        return str(exc)
    if backend.device == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "torch.compile on CUDA needs Triton (pip install triton), which is missing or too old for this GPU"
        return None
    return _cxx_reason()


# ------------------------------------------------------------------------------------------ engines
class _ScaleForward(torch.nn.Module):
    """One scale of the model as a module of the engine inputs (what torch.compile compiles)."""

    def __init__(self, model: MultiScaleNextDiT, combo: str):
        super().__init__()
        self.model = model
        self.combo = combo

    def forward(self, tokens, cos, sin, t, cap_feats, cap_mask, motion):  # noqa: ANN001, ANN201
        return self.model.forward_tokens(tokens, cos, sin, t, cap_feats, cap_mask, motion, self.combo)


def compile_scale(model: MultiScaleNextDiT, combo: str, mode: str) -> Callable[..., torch.Tensor]:
    """`model.forward_tokens` at one scale through torch.compile (compiled on first call; run it inside
    `compiled_kernels`): static shapes under CUDA graphs, else torch's automatic dynamic shapes (a scale's first
    shape compiled static, one more graph with the dimensions that changed marked dynamic for every later shape)."""
    dynamic = False if _device(model) == "cuda" and mode in CUDA_GRAPH_MODES else None
    return torch.compile(_ScaleForward(model, combo), mode=mode, dynamic=dynamic)


def _device(model: torch.nn.Module) -> str:
    return next(model.parameters()).device.type


class CompiledScaleEngine(torch_engine.TorchScaleEngine):
    """One patch size of the shared torch model, compiled (see the module docstring); inputs as `TorchScaleEngine`."""

    def __init__(
        self, combo: str, model: MultiScaleNextDiT, backend: str, sdpa: torch_engine.SdpaKernels, mode: str
    ) -> None:
        super().__init__(combo, model, "torch", sdpa)
        self.backend = backend
        self.mode = mode
        self.cuda_graphs = self.device.type == "cuda" and mode in CUDA_GRAPH_MODES
        self.compiled = compile_scale(model, combo, mode)

    def forward(self, args: list[torch.Tensor]) -> torch.Tensor:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            with compiled_kernels(self.device.type):
                out = self.compiled(*args)
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            raise BackendUnavailableError(f"backend {self.backend!r} cannot compile here: {exc}") from exc
        return out.clone() if self.cuda_graphs else out  # a CUDA graph's output is overwritten by its next replay


def load(engines: EngineFiles, backend: Backend, combos: list[str]) -> dict[str, CompiledScaleEngine]:
    """Compiled engines for these combos over the torch engines' shared model (compiled on each shape's first call)."""
    reason = unavailable_reason(engines, backend)
    if reason:
        raise BackendUnavailableError(f"backend {backend.name!r} cannot run: {reason}")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache_dir()))
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    where = torch_engine.placement(engines.precision, backend.device)
    model = torch_engine.shared_model(engines, backend.device, where)
    mode = compile_mode(backend.device)
    logger.info("engine backend %s: torch.compile mode %r, cache %s", backend.name, mode, inductor_cache_dir())
    return {combo: CompiledScaleEngine(combo, model, backend.name, where.sdpa, mode) for combo in combos}
