"""Gated attention (csrc/attention.cpp via kernels/cpu.py) against the float64 reference (kernels/attention.py)."""

from __future__ import annotations

import pytest
import torch

from lumina_rt import ops
from lumina_rt.errors import InputError
from lumina_rt.kernels.attention import gated_attention_ref
from tests._kernels import DTYPES, check_rule, gen, load_impl

# (B, N, Hq, Hk, Dh, L): the released head dim 144 with GQA 2:1 and odd token counts; more keys than one online-softmax
# block (512) and a ragged last block; fewer tokens than one micro-kernel column block (64); one caption token.
SHAPES = [
    (1, 37, 4, 2, 144, 5),
    (2, 300, 6, 3, 64, 32),
    (1, 1030, 2, 1, 144, 9),
    (2, 4, 4, 1, 32, 77),
    (1, 97, 2, 2, 16, 1),
]


def _inputs(shape, dtype, seed, masked, spread=1.0):
    g = gen(seed)
    b, n, hq, hk, dh, length = shape
    q = (torch.randn(b, n, hq, dh, generator=g) * spread).to(dtype)
    k, v = (torch.randn(b, n, hk, dh, generator=g).to(dtype) for _ in range(2))
    yk, yv = (torch.randn(b, length, hk, dh, generator=g).to(dtype) for _ in range(2))
    x_mask = None
    y_mask = torch.ones(b, length, dtype=torch.bool)
    if masked:  # padded tokens and padded captions (every row keeps at least its first key)
        x_mask = torch.rand(b, n, generator=g) > 0.3
        x_mask[:, 0] = True
        y_mask = torch.arange(length)[None, :] < torch.randint(1, length + 1, (b, 1), generator=g)
    gate = torch.randn(hq, generator=g)
    return q, k, v, x_mask, yk, yv, y_mask, gate


def _kernel_runs(dtype: torch.dtype) -> None:
    """Fail (not skip) on a CPU with the kernel if it would fall back; skip with the reason on one without."""
    from lumina_rt import _C

    code = {torch.float32: 0, torch.bfloat16: 2}[dtype]
    if not _C.attention_supported(code):
        need = "AVX-512" if dtype == torch.float32 else "AVX-512 with AVX512-BF16"
        pytest.skip(f"this CPU has no {need} (ISA {_C.isa()}): the op runs the PyTorch reference here")


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype, atol", [p for p in DTYPES if p.id != "fp16"])
def test_gated_attention(shape, dtype, atol, masked, monkeypatch):
    from lumina_rt.kernels import _common

    monkeypatch.setattr(_common, "POISON_OUTPUTS", True)
    _kernel_runs(dtype)
    args = _inputs(shape, dtype, 3, masked)
    out = load_impl("cpp", "").gated_attention(*args)
    ref = gated_attention_ref(*[a.double() if a is not None else None for a in args])
    same = ops.TORCH_IMPLS["gated_attention"](*args)
    check_rule(out, ref, same, atol, f"gated_attention {dtype}")


@pytest.mark.parametrize("dtype, atol", [p for p in DTYPES if p.id != "fp16"])
def test_large_logits_across_key_blocks(dtype, atol):
    """Peaked softmax (logits ~ +-100) whose maximum moves between key blocks: the online rescaling must hold."""
    _kernel_runs(dtype)
    args = list(_inputs((1, 1100, 2, 1, 64, 3), dtype, 5, masked=True, spread=12.0))
    out = load_impl("cpp", "").gated_attention(*args)
    ref = gated_attention_ref(*[a.double() if a is not None else None for a in args])
    check_rule(out, ref, ops.TORCH_IMPLS["gated_attention"](*args), atol, "large logits")


def test_strided_inputs_and_mask_dtypes():
    """Non-contiguous token / head strides (views of packed projections) and integer masks give the same result."""
    _kernel_runs(torch.float32)
    g = gen(7)
    b, n, hq, hk, dh, length = 2, 70, 4, 2, 32, 6
    qkv = torch.randn(b, n, (hq + 2 * hk) * dh, generator=g)
    q = qkv[..., : hq * dh].view(b, n, hq, dh)
    k = qkv[..., hq * dh : (hq + hk) * dh].view(b, n, hk, dh)
    v = qkv[..., (hq + hk) * dh :].view(b, n, hk, dh)
    yk, yv = torch.randn(2, b, length, hk, dh, generator=g)
    x_mask = torch.rand(b, n, generator=g) > 0.5
    x_mask[:, 0] = True
    y_mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    gate = torch.randn(hq, generator=g)
    cpu = load_impl("cpp", "")
    out = cpu.gated_attention(q, k, v, x_mask, yk, yv, y_mask.bool(), gate)
    contiguous = cpu.gated_attention(q.contiguous(), k.contiguous(), v.contiguous(), x_mask.long(), yk, yv, y_mask,
                                     gate)  # fmt: skip
    assert torch.equal(out, contiguous)
    ref = gated_attention_ref(q.double(), k.double(), v.double(), x_mask, yk.double(), yv.double(), y_mask, gate)
    assert (out.double() - ref).abs().max() < 1e-5


def test_other_dtypes_and_isas_use_the_reference():
    """float16 and the portable ISA run the PyTorch reference: bit-identical to the torch backend."""
    from lumina_rt import _C

    cpu = load_impl("cpp", "")
    half = _inputs((1, 40, 2, 1, 16, 3), torch.float16, 1, masked=True)
    assert torch.equal(cpu.gated_attention(*half), ops.TORCH_IMPLS["gated_attention"](*half))
    args = _inputs((1, 40, 2, 1, 16, 3), torch.float32, 1, masked=True)
    previous = _C.isa()
    _C.set_isa("portable")
    try:
        assert not _C.attention_supported(0)
        assert torch.equal(cpu.gated_attention(*args), ops.TORCH_IMPLS["gated_attention"](*args))
    finally:
        _C.set_isa(previous)


def test_fully_masked_rows_are_zero():
    """A batch item whose video tokens are all masked attends to nothing: 0 (the SDPA reference gives NaN)."""
    _kernel_runs(torch.float32)
    q, k, v, x_mask, yk, yv, y_mask, gate = _inputs((2, 20, 2, 1, 16, 3), torch.float32, 2, masked=True)
    x_mask[1] = False
    gate.zero_()  # tanh(0) = 0: no caption contribution
    out = load_impl("cpp", "").gated_attention(q, k, v, x_mask, yk, yv, y_mask, gate)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    ref = gated_attention_ref(q[:1].double(), k[:1].double(), v[:1].double(), x_mask[:1], yk[:1].double(),
                              yv[:1].double(), y_mask[:1], gate)  # fmt: skip
    assert (out[:1].double() - ref).abs().max() < 1e-5


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda a: a.__setitem__(1, a[1][:, :, :1].expand(-1, -1, 3, -1)),
            r"Hq = 4 must be a multiple of the key heads Hk = 3",
        ),
        (lambda a: a.__setitem__(2, a[2][:, :-1]), r"v must be \[B, N, Hk, Dh\]"),
        (lambda a: a.__setitem__(6, a[6][:, :-1]), r"y_mask must be \[B, L\]"),
        (lambda a: a.__setitem__(7, a[7][:-1]), r"gate must be \[Hq\] = \[4\]"),
        (lambda a: a.__setitem__(0, a[0].long()), r"q must be float32, float16 or bfloat16, got torch.int64"),
    ],
    ids=["heads", "v-tokens", "y-mask", "gate", "dtype"],
)
def test_bad_inputs_name_the_value(change, message):
    args = list(_inputs((1, 10, 4, 2, 16, 3), torch.float32, 0, masked=True))
    change(args)
    with pytest.raises(InputError, match=message):
        load_impl("cpp", "").gated_attention(*args)
