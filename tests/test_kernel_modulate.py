"""Fused norm + modulation ops (kernels/modulate.py, csrc/): Triton and C++ against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from lumina_rt import ops
from lumina_rt.errors import InputError
from lumina_rt.kernels import modulate
from tests import _kernels
from tests._kernels import DTYPES, check_rule, device_for, gen, load_impl

impl_name = _kernels.impl_name  # fixture: "triton", "cpp", "cpp-portable"

EPS = 1e-6
# (B, N, D): released width 2304, odd token counts, a width with a tail that is not a multiple of 16
SHAPES = [(1, 37, 2304), (3, 5, 2304), (2, 16, 384), (1, 7, 100)]


def _inputs(shape, dtype, seed, device):
    g = gen(seed)
    b, n, d = shape
    x = (torch.randn(b, n, d, generator=g) * 2 + 0.5).to(dtype)
    y = (torch.randn(b, n, d, generator=g) * 3).to(dtype)
    w = (1 + 0.3 * torch.randn(d, generator=g)).to(dtype)
    s = (0.5 * torch.randn(b, d, generator=g)).to(dtype)
    g_ = torch.randn(b, d, generator=g).to(dtype)
    return [t.to(device) for t in (x, y, w, s, g_)]


def _f64(*ts):
    return [t.cpu().double() for t in ts]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype, atol", DTYPES)
def test_rmsnorm_modulate(impl_name, shape, dtype, atol):
    x, _, w, s, _ = _inputs(shape, dtype, 1, device_for(impl_name))
    out = load_impl(impl_name, "modulate").rmsnorm_modulate(x, w, s, EPS)
    ref = modulate.rmsnorm_modulate_ref(*_f64(x, w, s), EPS)
    check_rule(out, ref, ops._rmsnorm_modulate_torch(x.cpu(), w.cpu(), s.cpu(), EPS), atol, "rmsnorm_modulate")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype, atol", DTYPES)
def test_gated_residual(impl_name, shape, dtype, atol):
    x, y, w, _, g = _inputs(shape, dtype, 2, device_for(impl_name))
    out = load_impl(impl_name, "modulate").gated_residual(x, y, w, g, EPS)
    ref = modulate.gated_residual_ref(*_f64(x, y, w, g), EPS)
    check_rule(out, ref, ops._gated_residual_torch(x.cpu(), y.cpu(), w.cpu(), g.cpu(), EPS), atol, "gated_residual")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype, atol", DTYPES)
def test_layernorm_modulate(impl_name, shape, dtype, atol):
    x, _, _, s, _ = _inputs(shape, dtype, 3, device_for(impl_name))
    out = load_impl(impl_name, "modulate").layernorm_modulate(x, s, EPS)
    ref = modulate.layernorm_modulate_ref(*_f64(x, s), EPS)
    check_rule(out, ref, ops._layernorm_modulate_torch(x.cpu(), s.cpu(), EPS), atol, "layernorm_modulate")


def test_strided_and_mixed_dtype_inputs(impl_name):
    """Token-sliced inputs (batch stride != N * D) and bf16 activations with float32 weights (float32 output)."""
    dev = device_for(impl_name)
    k = load_impl(impl_name, "modulate")
    x, y, w, s, g = _inputs((2, 19, 2304), torch.bfloat16, 4, dev)
    xs, ys = x[:, 3:14], y[:, 2:13]
    wf, sf, gf = w.float() * 1.01, s.float(), g.float()
    cases = [
        ("rmsnorm_modulate", k.rmsnorm_modulate(xs, wf, sf, EPS), modulate.rmsnorm_modulate_ref,
         ops._rmsnorm_modulate_torch, (xs, wf, sf)),
        ("gated_residual", k.gated_residual(xs, ys, wf, gf, EPS), modulate.gated_residual_ref,
         ops._gated_residual_torch, (xs, ys, wf, gf)),
        ("layernorm_modulate", k.layernorm_modulate(xs, sf, EPS), modulate.layernorm_modulate_ref,
         ops._layernorm_modulate_torch, (xs, sf)),
    ]  # fmt: skip
    for name, out, ref_fn, torch_fn, args in cases:
        assert out.dtype == torch.float32 and out.is_contiguous(), name
        ref = ref_fn(*[a.cpu().double() for a in args], EPS)
        check_rule(out, ref, torch_fn(*[a.cpu() for a in args], EPS), 1e-5, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_ref_matches_model_torch_impl(dtype):
    """The `*_ref` math is the math the model runs (lumina_rt.ops), up to rounding order."""
    x, y, w, s, g = _inputs((2, 9, 2304), dtype, 5, "cpu")
    pairs = [
        (modulate.rmsnorm_modulate_ref(x, w, s, EPS), ops._rmsnorm_modulate_torch(x, w, s, EPS)),
        (modulate.gated_residual_ref(x, y, w, g, EPS), ops._gated_residual_torch(x, y, w, g, EPS)),
        (modulate.layernorm_modulate_ref(x, s, EPS), ops._layernorm_modulate_torch(x, s, EPS)),
    ]
    for ref, model in pairs:
        assert ref.dtype == model.dtype
        # float32: rounding order only; bfloat16: PyTorch rounds every intermediate, the ref only the normalised x
        ulp = 2**-23 if dtype == torch.float32 else 2**-7
        torch.testing.assert_close(ref.float(), model.float(), rtol=2 * ulp, atol=2 * ulp * float(model.abs().max()))


@pytest.mark.parametrize("impl", ["triton", "cpp"])
def test_bad_inputs_name_the_value(impl):
    k = load_impl(impl, "modulate")
    dev = device_for(impl)
    x, y, w, s, g = _inputs((2, 5, 64), torch.float32, 6, dev)
    with pytest.raises(InputError, match=r"x must be \[B, N, D\], got shape \(5, 64\)"):
        k.rmsnorm_modulate(x[0], w, s, EPS)
    with pytest.raises(InputError, match=r"scale must be \[B, D\] = \[2, 64\], got shape \(3, 64\)"):
        k.rmsnorm_modulate(x, w, torch.zeros(3, 64, device=dev), EPS)
    with pytest.raises(InputError, match=r"weight must be \[D\] = \[64\], got shape \(63,\)"):
        k.gated_residual(x, y, w[:63], g, EPS)
    with pytest.raises(InputError, match=r"y must be \[B, N, D\] like x = \[2, 5, 64\], got shape \(2, 4, 64\)"):
        k.gated_residual(x, y[:, :4], w, g, EPS)
    with pytest.raises(InputError, match=r"x must be float32, float16 or bfloat16, got torch.int64"):
        k.layernorm_modulate(x.long(), s, EPS)
    with pytest.raises(InputError, match=r"eps must be a finite non-negative float, got -1.0"):
        k.layernorm_modulate(x, s, -1.0)


@pytest.mark.parametrize("backend", ["triton", "cpu-fused"])
def test_dispatch_through_ops(backend):
    """lumina_rt.ops routes to the fused backend and gives the reference result."""
    if backend == "cpu-fused":
        load_impl("cpp", "")
    dev = device_for("triton" if backend == "triton" else "cpp")
    x, y, w, s, g = _inputs((2, 11, 384), torch.float32, 7, dev)
    with ops.use_backend(backend), torch.no_grad():
        assert ops.get_backend() == backend
        outs = [
            ops.rmsnorm_modulate(x, w, s, EPS),
            ops.gated_residual(x, y, w, g, EPS),
            ops.layernorm_modulate(x, s, EPS),
        ]
    refs = [
        modulate.rmsnorm_modulate_ref(*_f64(x, w, s), EPS),
        modulate.gated_residual_ref(*_f64(x, y, w, g), EPS),
        modulate.layernorm_modulate_ref(*_f64(x, s), EPS),
    ]
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cpp_conversions_match_torch_bit_for_bit(dtype):
    """The C++ float16 / bfloat16 <-> float32 converters (portable path) equal PyTorch's: every 16-bit pattern,
    every midpoint between neighbours (ties to even), subnormals, overflow, inf and NaN."""
    load_impl("cpp", "")
    from lumina_rt import _C

    codes = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

    def convert(x: torch.Tensor, to: torch.dtype) -> torch.Tensor:
        out = torch.full(x.shape, float("nan"), dtype=to)
        _C.convert(x.data_ptr(), codes[x.dtype], out.data_ptr(), codes[to], x.numel())
        return out

    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    wide = convert(every, torch.float32)
    same = (wide.view(torch.int32) == every.float().view(torch.int32)) | (wide.isnan() & every.isnan())
    assert bool(same.all())
    finite = every.float()[every.isfinite()].double().unique()  # sorted
    g = gen(30)
    x = torch.cat([
        ((finite[1:] + finite[:-1]) / 2).float(),  # exact midpoints
        torch.randn(1 << 16, generator=g) * torch.logspace(-30, 30, 1 << 16, base=2.0),
        torch.tensor([float("inf"), -float("inf"), float("nan"), 65504.0, 65519.99, 65520.0, 0.0, -0.0, 2.0**-25]),
    ])  # fmt: skip
    narrow, expected = convert(x, dtype), x.to(dtype)
    same = (narrow.view(torch.int16) == expected.view(torch.int16)) | (narrow.isnan() & expected.isnan())
    assert bool(same.all()), f"{int((~same).sum())} of {x.numel()} conversions differ"
