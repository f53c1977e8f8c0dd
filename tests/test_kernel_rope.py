"""Fused RoPE of q and k (kernels/rope.py, csrc/): Triton and C++ against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from lumina_rt import ops
from lumina_rt.errors import InputError
from lumina_rt.kernels import rope
from tests import _kernels
from tests._kernels import DTYPES, check_rule, device_for, gen, load_impl

impl_name = _kernels.impl_name  # fixture: "triton", "cpp", "cpp-portable"

# (B, N, Hq, Hk, Dh): the released head dim 144 with GQA 2 and 1, odd token counts, small power-of-2 heads
SHAPES = [(1, 37, 4, 2, 144), (3, 5, 4, 4, 144), (2, 16, 6, 3, 64), (1, 9, 2, 1, 16)]


def _tables(b, n, half, batched, g):
    shape = (b, n, half) if batched else (n, half)
    angles = torch.rand(shape, generator=g, dtype=torch.float64) * 40 - 20
    return torch.cos(angles).float(), torch.sin(angles).float()


def _inputs(shape, dtype, batched, seed, device):
    g = gen(seed)
    b, n, hq, hk, dh = shape
    q = (torch.randn(b, n, hq, dh, generator=g) * 2).to(dtype)
    k = (torch.randn(b, n, hk, dh, generator=g) * 2).to(dtype)
    cos, sin = _tables(b, n, dh // 2, batched, g)
    return [t.to(device) for t in (q, k, cos, sin)]


@pytest.mark.parametrize("batched", [False, True], ids=["cos[N]", "cos[B,N]"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype, atol", DTYPES)
def test_rope_qk(impl_name, shape, dtype, atol, batched):
    q, k, cos, sin = _inputs(shape, dtype, batched, 10, device_for(impl_name))
    qo, ko = load_impl(impl_name, "rope").rope_qk(q, k, cos, sin)
    qr, kr = rope.rope_qk_ref(*[t.cpu().double() for t in (q, k, cos, sin)])
    qt, kt = ops._rope_qk_torch(q.cpu(), k.cpu(), cos.cpu(), sin.cpu())
    check_rule(qo, qr, qt, atol, "rope_qk q")
    check_rule(ko, kr, kt, atol, "rope_qk k")


def _ln_params(hq, hk, dh, g, device):
    p = [1 + 0.2 * torch.randn(hq * dh, generator=g), 0.1 * torch.randn(hq * dh, generator=g)]
    p += [1 + 0.2 * torch.randn(hk * dh, generator=g), 0.1 * torch.randn(hk * dh, generator=g)]
    return [t.to(device) for t in p]


def _ln_rope_torch(q, k, cos, sin, qw, qb, kw, kb, eps):
    """The model's path at q's precision: nn.LayerNorm over the flat heads, then ops' RoPE."""
    b, n = q.shape[:2]
    qn = torch.nn.functional.layer_norm(q.flatten(2), (qw.numel(),), qw.to(q.dtype), qb.to(q.dtype), eps)
    kn = torch.nn.functional.layer_norm(k.flatten(2), (kw.numel(),), kw.to(k.dtype), kb.to(k.dtype), eps)
    return ops._rope_qk_torch(qn.view(q.shape), kn.view(k.shape), cos, sin)


@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype, atol", DTYPES)
def test_rope_qk_layernorm(impl_name, shape, dtype, atol):
    dev = device_for(impl_name)
    q, k, cos, sin = _inputs(shape, dtype, True, 11, dev)
    params = _ln_params(shape[2], shape[3], shape[4], gen(12), dev)
    qo, ko = load_impl(impl_name, "rope").rope_qk_layernorm(q, k, cos, sin, *params, 1e-6)
    qr, kr = rope.rope_qk_layernorm_ref(*[t.cpu().double() for t in (q, k, cos, sin, *params)], 1e-6)
    qt, kt = _ln_rope_torch(*[t.cpu() for t in (q, k, cos, sin, *params)], 1e-6)
    check_rule(qo, qr, qt, atol, "rope_qk_layernorm q")
    check_rule(ko, kr, kt, atol, "rope_qk_layernorm k")


def test_rope_broadcast_table_and_strided_input(impl_name):
    """cos/sin [1, N, Dh/2] broadcast over the batch; q a strided view (heads sliced out of a wider tensor)."""
    dev = device_for(impl_name)
    q, k, cos, sin = _inputs((3, 7, 8, 2, 144), torch.float32, True, 13, dev)
    q = q[:, :, ::2]  # [3, 7, 4, 144], not contiguous
    cos, sin = cos[:1], sin[:1]
    qo, ko = load_impl(impl_name, "rope").rope_qk(q, k, cos, sin)
    qr, kr = rope.rope_qk_ref(*[t.cpu().double() for t in (q, k, cos, sin)])
    qt, kt = ops._rope_qk_torch(q.cpu(), k.cpu(), cos.cpu(), sin.cpu())
    check_rule(qo, qr, qt, 1e-5, "q")
    check_rule(ko, kr, kt, 1e-5, "k")


def test_identity_rotation_is_exact(impl_name):
    """cos = 1, sin = 0 returns the input bit for bit (no stray rounding, every element written)."""
    dev = device_for(impl_name)
    q, k, _, _ = _inputs((2, 5, 4, 2, 144), torch.bfloat16, False, 14, dev)
    cos, sin = torch.ones(5, 72, device=dev), torch.zeros(5, 72, device=dev)
    qo, ko = load_impl(impl_name, "rope").rope_qk(q, k, cos, sin)
    assert torch.equal(qo.cpu(), q.cpu()) and torch.equal(ko.cpu(), k.cpu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_ref_matches_model_torch_impl(dtype):
    q, k, cos, sin = _inputs((2, 9, 4, 2, 144), dtype, False, 15, "cpu")
    for ref, model in zip(rope.rope_qk_ref(q, k, cos, sin), ops._rope_qk_torch(q, k, cos, sin)):
        assert ref.dtype == model.dtype == dtype
        torch.testing.assert_close(ref, model, rtol=0, atol=0)


def test_rope_matches_released_complex_rotation():
    """Interleaved pairs rotated as complex numbers (the released apply_rotary_emb) give the same result."""
    q, _, cos, sin = _inputs((1, 6, 2, 2, 16), torch.float64, False, 16, "cpu")
    xc = torch.view_as_complex(q.reshape(*q.shape[:-1], -1, 2))
    rotated = torch.view_as_real(
        xc * torch.polar(torch.ones_like(cos.double()), torch.atan2(sin, cos).double())[:, None]
    )
    out, _ = rope.rope_qk_ref(q, q, cos.double(), sin.double())
    torch.testing.assert_close(out, rotated.flatten(-2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["triton", "cpp"])
def test_bad_inputs_name_the_value(impl):
    k_ = load_impl(impl, "rope")
    dev = device_for(impl)
    q, k, cos, sin = _inputs((1, 5, 6, 3, 16), torch.float32, False, 17, dev)
    k4 = torch.zeros(1, 5, 4, 16, device=dev)
    with pytest.raises(InputError, match=r"Hq=6 is not a multiple of Hk=4"):
        k_.rope_qk(q, k4, cos, sin)
    with pytest.raises(InputError, match=r"q must be \[B, N, Hq, Dh\], got shape \(5, 6, 16\)"):
        k_.rope_qk(q[0], k, cos, sin)
    with pytest.raises(
        InputError, match=r"cos must be \[N, Dh/2\] or \[B, N, Dh/2\] = \[1, 5, 8\], got shape \(5, 7\)"
    ):
        k_.rope_qk(q, k, cos[:, :7], sin)
    with pytest.raises(InputError, match=r"head dim Dh=15 of q must be even"):
        k_.rope_qk(q[..., :15], k[..., :15], cos, sin)
    with pytest.raises(InputError, match=r"q_w must be \[Hq\*Dh\] = \[96\], got shape \(95,\)"):
        w = torch.ones(96, device=dev)
        k_.rope_qk_layernorm(q, k, cos, sin, w[:95], w, w[:48], w[:48], 1e-6)


@pytest.mark.parametrize("backend", ["triton", "cpu-fused"])
def test_dispatch_through_ops(backend):
    if backend == "cpu-fused":
        load_impl("cpp", "")
    dev = device_for("triton" if backend == "triton" else "cpp")
    q, k, cos, sin = _inputs((2, 7, 4, 2, 144), torch.float32, False, 18, dev)
    with ops.use_backend(backend), torch.no_grad():
        qo, ko = ops.rope_qk(q, k, cos, sin)
    qr, kr = rope.rope_qk_ref(*[t.cpu().double() for t in (q, k, cos, sin)])
    torch.testing.assert_close(qo.cpu().double(), qr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ko.cpu().double(), kr, rtol=1e-5, atol=1e-5)
