"""Patchify / unpatchify (kernels/patchify.py, csrc/): pure data movement, so every check is bit-exact."""

from __future__ import annotations

import pytest
import torch

from lumina_rt import ops
from lumina_rt.errors import InputError
from lumina_rt.kernels import patchify as pk
from tests import _kernels
from tests._kernels import device_for, gen, load_impl

impl_name = _kernels.impl_name  # fixture: "triton", "cpp", "cpp-portable"

COMBOS = [(1, 2, 2), (2, 2, 2), (2, 4, 4)]  # every released (pf, ph, pw)
DTYPES = [
    pytest.param(d, id=n) for d, n in ((torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16"))
]
# (B, C, F, H, W): released 16 latent channels, F = 1 images, a channel count and widths with 8 x 8 tile edges
SHAPES = [(1, 16, 1, 8, 12), (3, 16, 4, 8, 24), (2, 5, 2, 4, 20), (1, 12, 4, 16, 12)]


def _latent(shape, dtype, seed, device):
    return torch.randn(shape, generator=gen(seed)).to(dtype).to(device)


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_patchify_unpatchify(impl_name, combo, shape, dtype):
    k = load_impl(impl_name, "patchify")
    x = _latent(shape, dtype, 20, device_for(impl_name))
    frames, height, width = shape[2:]
    tokens = k.patchify(x, *combo)
    expected = ops._patchify_torch(x.cpu(), *combo)
    assert _equal(tokens, expected)
    back = k.unpatchify(tokens, frames, height, width, *combo)
    assert _equal(back, ops._unpatchify_torch(expected, frames, height, width, *combo))
    assert _equal(back, x)  # round trip, images included (cropped back to F = 1)


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(map(str, c)))
def test_unpatchify_image_keeps_frame_zero(impl_name, combo):
    """Tokens of an image hold pf computed frames; unpatchify keeps frame 0 (the model's output for F = 1)."""
    k = load_impl(impl_name, "patchify")
    pf, ph, pw = combo
    n = 1 * (8 // ph) * (16 // pw)
    tokens = torch.randn(2, n, pf * ph * pw * 16, generator=gen(21)).to(device_for(impl_name))
    out = k.unpatchify(tokens, 1, 8, 16, *combo)
    assert out.shape == (2, 16, 1, 8, 16)
    assert _equal(out, ops._unpatchify_torch(tokens.cpu(), 1, 8, 16, *combo))


def test_strided_inputs(impl_name):
    """A channel-sliced latent (non-contiguous) and token slices as in the model's list path (out[i:i+1, :L])."""
    k = load_impl(impl_name, "patchify")
    dev = device_for(impl_name)
    big = _latent((2, 20, 4, 8, 16), torch.float32, 22, dev)
    x = big[:, 2:18]  # [2, 16, 4, 8, 16], strided
    tokens = k.patchify(x, 2, 2, 2)
    assert _equal(tokens, ops._patchify_torch(x.cpu().contiguous(), 2, 2, 2))
    padded = torch.cat([tokens, torch.full_like(tokens[:, :5], 7.0)], dim=1)  # [2, N + 5, P]
    item = padded[1:2, : tokens.shape[1]]
    out = k.unpatchify(item, 4, 8, 16, 2, 2, 2)
    assert _equal(out, x[1:2])


def test_ref_matches_model_torch_impl():
    for shape in SHAPES:
        x = _latent(shape, torch.float32, 23, "cpu")
        for combo in COMBOS:
            t = pk.patchify_ref(x, *combo)
            assert _equal(t, ops._patchify_torch(x, *combo))
            args = (shape[2], shape[3], shape[4], *combo)
            assert _equal(pk.unpatchify_ref(t, *args), ops._unpatchify_torch(t, *args))


def test_token_positions_follow_patchify_order():
    """token_positions(f, h, w)[t] is the (f, h, w) grid index of token t as patchify lays tokens out."""
    f, h, w = 3, 4, 5
    grid = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"))
    tokens = pk.patchify_ref(grid[None].float(), 1, 1, 1)[0]  # [N, 3]: features are the 3 "channels"
    pos = pk.token_positions(f, h, w)
    assert pos.dtype == torch.int32 and pos.shape == (f * h * w, 3)
    assert torch.equal(pos, tokens.to(torch.int32))


@pytest.mark.parametrize("impl", ["triton", "cpp"])
def test_bad_inputs_name_the_value(impl):
    k = load_impl(impl, "patchify")
    dev = device_for(impl)
    x = torch.zeros(1, 16, 4, 8, 12, device=dev)
    with pytest.raises(InputError, match=r"height H=7 is not a multiple of ph=2"):
        k.patchify(x[:, :, :, :7], 1, 2, 2)
    with pytest.raises(InputError, match=r"frames F=3 is not a multiple of pf=2 \(and not 1, an image\)"):
        k.patchify(x[:, :, :3], 2, 2, 2)
    with pytest.raises(InputError, match=r"x must be \[B, C, F, H, W\], got shape \(16, 4, 8, 12\)"):
        k.patchify(x[0], 1, 2, 2)
    with pytest.raises(InputError, match=r"pw must be a positive int, got 0"):
        k.patchify(x, 1, 2, 0)
    tokens = torch.zeros(1, 48, 64, device=dev)
    with pytest.raises(InputError, match=r"tokens has N=48 tokens, but frames=4, height=8, width=12 .* give 96"):
        k.unpatchify(tokens, 4, 8, 12, 1, 2, 2)
    with pytest.raises(InputError, match=r"tokens feature size 63 is not a multiple of pf\*ph\*pw=4"):
        k.unpatchify(tokens[..., :63], 4, 8, 12, 1, 2, 2)


@pytest.mark.parametrize("backend", ["triton", "cpu-fused"])
def test_dispatch_through_ops(backend):
    if backend == "cpu-fused":
        load_impl("cpp", "")
    x = _latent((2, 16, 1, 8, 12), torch.bfloat16, 24, device_for("triton" if backend == "triton" else "cpp"))
    with ops.use_backend(backend), torch.no_grad():
        tokens = ops.patchify(x, 2, 2, 2)
        back = ops.unpatchify(tokens, 1, 8, 12, 2, 2, 2)
    assert _equal(tokens, pk.patchify_ref(x.cpu(), 2, 2, 2))
    assert _equal(back, x)
