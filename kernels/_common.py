"""Input checks and output allocation shared by the Triton launchers and the C++ wrappers (pure PyTorch).

Every check raises `lumina_rt.errors.InputError` with a message that names the bad value.
"""

from __future__ import annotations

import torch

from lumina_rt.config import token_grid
from lumina_rt.errors import InputError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tests set this to True: every output is then pre-filled with NaN, so an element a kernel fails to write shows.
POISON_OUTPUTS = False


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A fresh contiguous output tensor (NaN-filled when POISON_OUTPUTS is set)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def shape_str(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def check_tensor(name: str, t: object, dims: str, ndim: int) -> torch.Tensor:
    """t is a tensor of rank ndim (`dims` spells the expected layout, e.g. "[B, N, D]")."""
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor {dims}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise InputError(f"{name} must be {dims}, got shape {shape_str(t)}")
    return t


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise InputError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_same_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t.device != ref.device:
            raise InputError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def check_shape(name: str, t: torch.Tensor, expected: tuple[int, ...], dims: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise InputError(f"{name} must be {dims} = {list(expected)}, got shape {shape_str(t)}")


def check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0.0 or eps == float("inf"):
        raise InputError(f"eps must be a finite non-negative float, got {eps!r}")
    return float(eps)


def check_positive_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InputError(f"{name} must be a positive int, got {v!r}")
    return v


def result_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype PyTorch's type promotion gives the op's output."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# ----------------------------------------------------------------------------------------------
# Per-op checks
# ----------------------------------------------------------------------------------------------


def check_rmsnorm_modulate(x, weight, scale, eps) -> float:
    check_tensor("x", x, "[B, N, D]", 3)
    b, _, d = x.shape
    check_tensor("weight", weight, "[D]", 1)
    check_tensor("scale", scale, "[B, D]", 2)
    for name, t in (("x", x), ("weight", weight), ("scale", scale)):
        check_float(name, t)
    check_shape("weight", weight, (d,), "[D]")
    check_shape("scale", scale, (b, d), "[B, D]")
    check_same_device("x", x, weight=weight, scale=scale)
    return check_eps(eps)


def check_gated_residual(x, y, weight, gate, eps) -> float:
    check_tensor("x", x, "[B, N, D]", 3)
    b, n, d = x.shape
    check_tensor("y", y, "[B, N, D]", 3)
    check_tensor("weight", weight, "[D]", 1)
    check_tensor("gate", gate, "[B, D]", 2)
    for name, t in (("x", x), ("y", y), ("weight", weight), ("gate", gate)):
        check_float(name, t)
    check_shape("y", y, (b, n, d), "[B, N, D] like x")
    check_shape("weight", weight, (d,), "[D]")
    check_shape("gate", gate, (b, d), "[B, D]")
    check_same_device("x", x, y=y, weight=weight, gate=gate)
    return check_eps(eps)


def check_layernorm_modulate(x, scale, eps) -> float:
    check_tensor("x", x, "[B, N, D]", 3)
    b, _, d = x.shape
    check_tensor("scale", scale, "[B, D]", 2)
    check_float("x", x)
    check_float("scale", scale)
    check_shape("scale", scale, (b, d), "[B, D]")
    check_same_device("x", x, scale=scale)
    return check_eps(eps)


def check_rope_qk(q, k, cos, sin) -> int:
    """Returns the batch stride of cos/sin in rows of N (0 when the table is shared by the batch)."""
    check_tensor("q", q, "[B, N, Hq, Dh]", 4)
    check_tensor("k", k, "[B, N, Hk, Dh]", 4)
    b, n, hq, dh = q.shape
    check_float("q", q)
    check_float("k", k)
    if dh % 2:
        raise InputError(f"head dim Dh={dh} of q must be even (RoPE rotates pairs)")
    if k.shape[0] != b or k.shape[1] != n or k.shape[3] != dh:
        raise InputError(f"k must be [B, N, Hk, Dh] = [{b}, {n}, Hk, {dh}] like q {shape_str(q)}, got {shape_str(k)}")
    hk = k.shape[2]
    if hk < 1 or hq % hk:
        raise InputError(f"Hq={hq} is not a multiple of Hk={hk}")
    for name, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3):
            got = f"shape {shape_str(t)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"{name} must be [N, Dh/2] or [B, N, Dh/2] = [{n}, {dh // 2}], got {got}")
        if not t.is_floating_point():
            raise InputError(f"{name} must be a floating tensor (float32), got {t.dtype}")
        if tuple(t.shape[-2:]) != (n, dh // 2) or (t.dim() == 3 and t.shape[0] not in (1, b)):
            raise InputError(
                f"{name} must be [N, Dh/2] or [B, N, Dh/2] = [{b}, {n}, {dh // 2}], got shape {shape_str(t)}"
            )
    if cos.shape != sin.shape:
        raise InputError(f"cos and sin must have the same shape, got {shape_str(cos)} and {shape_str(sin)}")
    check_same_device("q", q, k=k, cos=cos, sin=sin)
    return n if (cos.dim() == 3 and cos.shape[0] == b and b > 1) else 0


def check_rope_qk_layernorm(q, k, cos, sin, q_w, q_b, k_w, k_b, eps) -> tuple[int, float]:
    bstride = check_rope_qk(q, k, cos, sin)
    hq, dh, hk = q.shape[2], q.shape[3], k.shape[2]
    for name, t, width in (("q_w", q_w, hq * dh), ("q_b", q_b, hq * dh), ("k_w", k_w, hk * dh), ("k_b", k_b, hk * dh)):
        check_tensor(name, t, f"[{'Hq' if name[0] == 'q' else 'Hk'}*Dh]", 1)
        check_float(name, t)
        check_shape(name, t, (width,), f"[{'Hq' if name[0] == 'q' else 'Hk'}*Dh]")
    check_same_device("q", q, q_w=q_w, q_b=q_b, k_w=k_w, k_b=k_b)
    return bstride, check_eps(eps)


def check_patchify(x, pf, ph, pw) -> int:
    """Returns the number of frames computed (F, or pf for an image F = 1)."""
    check_tensor("x", x, "[B, C, F, H, W]", 5)
    check_float("x", x)
    for name, v in (("pf", pf), ("ph", ph), ("pw", pw)):
        check_positive_int(name, v)
    _, _, f, h, w = x.shape
    f_compute = token_grid(f, h, w, pf, ph, pw)[0] * pf  # an image (F = 1) counts as pf frames
    if f != 1 and f % pf:
        raise InputError(f"frames F={f} is not a multiple of pf={pf} (and not 1, an image)")
    if h % ph:
        raise InputError(f"height H={h} is not a multiple of ph={ph}")
    if w % pw:
        raise InputError(f"width W={w} is not a multiple of pw={pw}")
    return f_compute


def check_unpatchify(tokens, frames, height, width, pf, ph, pw) -> tuple[int, int]:
    """Returns (C, computed frame count)."""
    check_tensor("tokens", tokens, "[B, N, pf*ph*pw*C]", 3)
    check_float("tokens", tokens)
    for name, v in (("frames", frames), ("height", height), ("width", width), ("pf", pf), ("ph", ph), ("pw", pw)):
        check_positive_int(name, v)
    grid = token_grid(frames, height, width, pf, ph, pw)
    f_compute = grid[0] * pf
    if frames != 1 and frames % pf:
        raise InputError(f"frames={frames} is not a multiple of pf={pf} (and not 1, an image)")
    if height % ph:
        raise InputError(f"height={height} is not a multiple of ph={ph}")
    if width % pw:
        raise InputError(f"width={width} is not a multiple of pw={pw}")
    _, n, feat = tokens.shape
    if feat % (pf * ph * pw):
        raise InputError(f"tokens feature size {feat} is not a multiple of pf*ph*pw={pf * ph * pw}")
    n_expected = grid[0] * grid[1] * grid[2]
    if n != n_expected:
        raise InputError(
            f"tokens has N={n} tokens, but frames={frames}, height={height}, width={width} with patch "
            f"(pf, ph, pw)=({pf}, {ph}, {pw}) give {n_expected}"
        )
    return feat // (pf * ph * pw), f_compute


def check_gated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    x_mask: torch.Tensor | None,
    yk: torch.Tensor,
    yv: torch.Tensor,
    y_mask: torch.Tensor,
    gate: torch.Tensor,
) -> None:
    """Shapes of `lumina_rt.ops.gated_attention`: q [B, N, Hq, Dh]; k, v [B, N, Hk, Dh]; yk, yv [B, L, Hk, Dh]."""
    check_tensor("q", q, "[B, N, Hq, Dh]", 4)
    b, n, hq, dh = q.shape
    check_float("q", q)
    for name, t in (("k", k), ("v", v), ("yk", yk), ("yv", yv)):
        check_tensor(name, t, "[B, L, Hk, Dh]", 4)
        check_float(name, t)
    hk = k.shape[2]
    if hk == 0 or hq % hk != 0:
        raise InputError(f"query heads Hq = {hq} must be a multiple of the key heads Hk = {hk} (q {shape_str(q)}, "
                         f"k {shape_str(k)})")  # fmt: skip
    check_shape("k", k, (b, n, hk, dh), "[B, N, Hk, Dh]")
    check_shape("v", v, (b, n, hk, dh), "[B, N, Hk, Dh]")
    check_shape("yk", yk, (b, yk.shape[1], hk, dh), "[B, L, Hk, Dh]")
    check_shape("yv", yv, tuple(yk.shape), "[B, L, Hk, Dh]")
    if x_mask is not None:
        check_shape("x_mask", x_mask, (b, n), "[B, N]")
    check_shape("y_mask", y_mask, (b, yk.shape[1]), "[B, L]")
    check_shape("gate", gate, (hq,), "[Hq]")
    check_same_device("q", q, k=k, v=v, yk=yk, yv=yv, gate=gate)
