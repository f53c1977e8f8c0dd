"""CPU fused ops: thin wrappers over the C++ extension `lumina_rt._C` (csrc/, pybind11 + OpenMP).

Same signatures and checks as the Triton launchers; inputs of float32, float16 or bfloat16 (the output dtype is
PyTorch's promoted dtype, as in `lumina_rt.ops`). Importing this module raises ImportError when the extension is not
built (`pip install .` builds it); `lumina_rt.ops` turns that into a BackendUnavailableError.
Tensors cross into C++ as `data_ptr()` addresses with sizes and strides in elements; the wrappers make inputs
contiguous where the C++ loops need it and allocate every output here. Threads: `torch.get_num_threads()`.
Instruction set of the C++ row kernels: the best this CPU runs (`_C.supported_isas()[0]`: avx512, avx2 or portable),
or the one named by the environment variable LUMINA_RT_CPU_ISA when this module is imported (`_C.set_isa` later).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from lumina_rt import _C
from lumina_rt.errors import ConfigError, InputError

from ._common import (
    check_gated_attention,
    check_gated_residual,
    check_layernorm_modulate,
    check_patchify,
    check_rmsnorm_modulate,
    check_rope_qk,
    check_rope_qk_layernorm,
    check_unpatchify,
    new_output,
    result_dtype,
)
from .attention import gated_attention_sdpa

_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _isa_from_env() -> None:
    """Apply LUMINA_RT_CPU_ISA (portable | avx2 | avx512) when set; a value this CPU / build cannot run is an error."""
    name = os.environ.get("LUMINA_RT_CPU_ISA", "")
    if name:
        try:
            _C.set_isa(name)
        except ValueError as exc:
            raise ConfigError(f"LUMINA_RT_CPU_ISA={name!r}: {exc}") from None


_isa_from_env()


def _code(t: torch.Tensor | torch.dtype) -> int:
    return _CODES[t if isinstance(t, torch.dtype) else t.dtype]


def _on_cpu(name: str, t: torch.Tensor) -> None:
    if t.device.type != "cpu":
        raise InputError(f"the cpu-fused backend needs CPU tensors, {name} is on {t.device}")


def _rows(t: torch.Tensor) -> torch.Tensor:
    """Feature dim contiguous (batch / token strides are passed to C++)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def _nt() -> int:
    return torch.get_num_threads()


def rmsnorm_modulate(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(x) * weight * (1 + scale[b]). x [B, N, D]; weight [D]; scale [B, D] -> new [B, N, D] (promoted dtype)."""
    eps = check_rmsnorm_modulate(x, weight, scale, eps)
    _on_cpu("x", x)
    b, n, d = x.shape
    out = new_output((b, n, d), result_dtype(x, weight, scale), torch.device("cpu"))
    if out.numel() == 0:
        return out
    x, weight, scale = _rows(x), _f32(weight), _f32(scale)
    _C.rmsnorm_modulate(
        x.data_ptr(), _code(x), weight.data_ptr(), scale.data_ptr(), out.data_ptr(), _code(out),
        b, n, d, x.stride(0), x.stride(1), eps, _nt(),
    )  # fmt: skip
    return out


def gated_residual(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, gate: torch.Tensor, eps: float
) -> torch.Tensor:
    """x + tanh(gate[b]) * RMSNorm(y) * weight. x, y [B, N, D]; weight [D]; gate [B, D] -> new [B, N, D]."""
    eps = check_gated_residual(x, y, weight, gate, eps)
    _on_cpu("x", x)
    b, n, d = x.shape
    out = new_output((b, n, d), result_dtype(x, y, weight, gate), torch.device("cpu"))
    if out.numel() == 0:
        return out
    x, y, weight, gate = _rows(x), _rows(y), _f32(weight), _f32(gate)
    _C.gated_residual(
        x.data_ptr(), _code(x), y.data_ptr(), _code(y), weight.data_ptr(), gate.data_ptr(), out.data_ptr(), _code(out),
        b, n, d, x.stride(0), x.stride(1), y.stride(0), y.stride(1), eps, _nt(),
    )  # fmt: skip
    return out


def layernorm_modulate(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm(x) (no affine) * (1 + scale[b]). x [B, N, D]; scale [B, D] -> new [B, N, D] (promoted dtype)."""
    eps = check_layernorm_modulate(x, scale, eps)
    _on_cpu("x", x)
    b, n, d = x.shape
    out = new_output((b, n, d), result_dtype(x, scale), torch.device("cpu"))
    if out.numel() == 0:
        return out
    x, scale = _rows(x), _f32(scale)
    _C.layernorm_modulate(
        x.data_ptr(), _code(x), scale.data_ptr(), out.data_ptr(), _code(out), b, n, d, x.stride(0), x.stride(1),
        eps, _nt(),
    )  # fmt: skip
    return out


def rope_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on q [B, N, Hq, Dh] and k [B, N, Hk, Dh] with cos/sin [N, Dh/2] or [B, N, Dh/2] -> new (q_out, k_out)."""
    cos_bstride = check_rope_qk(q, k, cos, sin)
    _on_cpu("q", q)
    q, k, cos, sin = q.contiguous(), k.contiguous(), _f32(cos), _f32(sin)
    qo, ko = new_output(q.shape, q.dtype, q.device), new_output(k.shape, k.dtype, k.device)
    b, n, hq, dh = q.shape
    if q.numel() == 0:
        return qo, ko
    _C.rope_qk(
        q.data_ptr(), k.data_ptr(), qo.data_ptr(), ko.data_ptr(), _code(q), _code(k), cos.data_ptr(), sin.data_ptr(),
        b, n, hq, k.shape[2], dh, cos_bstride, _nt(),
    )  # fmt: skip
    return qo, ko


def rope_qk_layernorm(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q_w: torch.Tensor,
    q_b: torch.Tensor,
    k_w: torch.Tensor,
    k_b: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """QK-LayerNorm (weights [Hq*Dh] / [Hk*Dh]) then RoPE, as `lumina_rt.kernels.rope.rope_qk_layernorm`."""
    cos_bstride, eps = check_rope_qk_layernorm(q, k, cos, sin, q_w, q_b, k_w, k_b, eps)
    _on_cpu("q", q)
    q, k, cos, sin = q.contiguous(), k.contiguous(), _f32(cos), _f32(sin)
    q_w, q_b, k_w, k_b = _f32(q_w), _f32(q_b), _f32(k_w), _f32(k_b)
    qo, ko = new_output(q.shape, q.dtype, q.device), new_output(k.shape, k.dtype, k.device)
    b, n, hq, dh = q.shape
    if q.numel() == 0:
        return qo, ko
    _C.rope_qk_layernorm(
        q.data_ptr(), k.data_ptr(), qo.data_ptr(), ko.data_ptr(), _code(q), _code(k), cos.data_ptr(), sin.data_ptr(),
        q_w.data_ptr(), q_b.data_ptr(), k_w.data_ptr(), k_b.data_ptr(), b, n, hq, k.shape[2], dh, cos_bstride, eps,
        _nt(),
    )  # fmt: skip
    return qo, ko


def patchify(x: torch.Tensor, pf: int, ph: int, pw: int) -> torch.Tensor:
    """[B, C, F, H, W] (any strides; F = 1 repeated to pf frames) -> new [B, N, pf*ph*pw*C] of x's dtype."""
    f_compute = check_patchify(x, pf, ph, pw)
    _on_cpu("x", x)
    b, c, f, h, w = x.shape
    n = (f_compute // pf) * (h // ph) * (w // pw)
    out = new_output((b, n, pf * ph * pw * c), x.dtype, torch.device("cpu"))
    if out.numel() == 0:
        return out
    sb, sc, sf, sh, sw = x.stride()
    _C.patchify(
        x.data_ptr(), out.data_ptr(), _code(x), b, c, f_compute, h, w, pf, ph, pw, sb, sc, 0 if f == 1 else sf, sh, sw,
        _nt(),
    )  # fmt: skip
    return out


def unpatchify(tokens: torch.Tensor, frames: int, height: int, width: int, pf: int, ph: int, pw: int) -> torch.Tensor:
    """[B, N, pf*ph*pw*C] -> new [B, C, frames, height, width] of tokens' dtype (images keep frame 0)."""
    c, f_compute = check_unpatchify(tokens, frames, height, width, pf, ph, pw)
    _on_cpu("tokens", tokens)
    b = tokens.shape[0]
    out = new_output((b, c, frames, height, width), tokens.dtype, torch.device("cpu"))
    if out.numel() == 0:
        return out
    tokens = _rows(tokens)
    _C.unpatchify(
        tokens.data_ptr(), out.data_ptr(), _code(tokens), b, c, frames, f_compute, height, width, pf, ph, pw,
        tokens.stride(0), tokens.stride(1), _nt(),
    )  # fmt: skip
    return out


def _view(t: torch.Tensor) -> list[int]:
    """(address, batch, token, head strides) of a [B, L, H, Dh] tensor."""
    return [t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)]


def _key_mask(mask: torch.Tensor | None) -> tuple[torch.Tensor | None, list[int]]:
    if mask is None:
        return None, [0, 0]
    m = mask.to(torch.uint8).contiguous()
    return m, [m.data_ptr(), m.stride(0)]


def gated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    x_mask: torch.Tensor | None,
    yk: torch.Tensor,
    yv: torch.Tensor,
    y_mask: torch.Tensor,
    gate: torch.Tensor,
) -> torch.Tensor:
    """Self-attention + tanh-gated cross-attention (csrc/attention.cpp) -> new [B, N, Hq*Dh] of q's dtype.

    Shapes as `lumina_rt.ops.gated_attention`. The kernel runs float32 with AVX-512 and bfloat16 with AVX512-BF16
    (`_C.attention_supported`); other dtypes and CPUs (and the ISA set to avx2 / portable) use PyTorch's SDPA
    (`kernels.attention.gated_attention_sdpa`).
    """
    check_gated_attention(q, k, v, x_mask, yk, yv, y_mask, gate)
    _on_cpu("q", q)
    b, n, hq, dh = q.shape
    same_dtype = all(t.dtype == q.dtype for t in (k, v, yk, yv))
    if not same_dtype or not _C.attention_supported(_code(q)) or n == 0 or yk.shape[1] == 0:
        return gated_attention_sdpa(q, k, v, x_mask, yk, yv, y_mask, gate)
    q, k, v, yk, yv = (_rows(t) for t in (q, k, v, yk, yv))
    xm, xm_view = _key_mask(x_mask)
    ym, ym_view = _key_mask(y_mask)
    tanh_gate = gate.detach().float().tanh().contiguous()
    out = new_output((b, n, hq * dh), q.dtype, q.device)
    _C.gated_attention(
        _view(q), _view(k), _view(v), xm_view, _view(yk), _view(yv), ym_view, tanh_gate.data_ptr(),
        [out.data_ptr(), out.stride(0), out.stride(1), dh], b, n, k.shape[1], yk.shape[1], hq, k.shape[2], dh,
        dh**-0.5, _code(q), _nt(),
    )  # fmt: skip
    del xm, ym
    return out


CPU_IMPLS: dict[str, Callable] = {
    "rmsnorm_modulate": rmsnorm_modulate,
    "gated_residual": gated_residual,
    "layernorm_modulate": layernorm_modulate,
    "rope_qk": rope_qk,
    "rope_qk_layernorm": rope_qk_layernorm,
    "patchify": patchify,
    "unpatchify": unpatchify,
    "gated_attention": gated_attention,
}
