"""Instruction sets of the C++ ops (csrc/lumina_ops.cpp): every ISA this CPU runs (AVX-512 with and without the
AVX512-BF16 rounding, AVX2, portable) meets the kernel tests' rule against the float64 reference and agrees with the
portable path; CPUID detection matches the CPU flags the OS reports; LUMINA_RT_CPU_ISA forces an ISA at import; bad
ISA names are errors naming the value; the default build is portable (no -march=native)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from lumina_rt import ops
from lumina_rt.errors import ConfigError
from lumina_rt.kernels import modulate, rope
from tests import test_kernel_modulate as tmod
from tests import test_kernel_patchify as tpatch
from tests import test_kernel_rope as trope
from tests._kernels import DTYPES, check_rule, gen, load_impl

EPS = tmod.EPS
KNOWN = ["avx512", "avx2", "portable"]
# (ISA, round to bfloat16 with AVX512-BF16); ids name what runs
ISAS = [
    pytest.param(("avx512", True), id="avx512-bf16"),
    pytest.param(("avx512", False), id="avx512"),
    pytest.param(("avx2", False), id="avx2"),
    pytest.param(("portable", False), id="portable"),
]
ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@pytest.fixture(scope="module")
def cpu():
    return load_impl("cpp", "")  # fails (never skips) when the extension is not built


@pytest.fixture(scope="module")
def C(cpu):
    from lumina_rt import _C

    return _C


@contextmanager
def using(C, name: str, hw_bf16: bool = False):
    """Run the block with the row kernels of ISA `name`; restores the previous choice."""
    previous = C.isa(), C.avx512_bf16()
    C.set_isa(name)
    C.set_avx512_bf16(hw_bf16)
    try:
        yield
    finally:
        C.set_isa(previous[0])
        C.set_avx512_bf16(previous[1])


def has_avx512_bf16(C) -> bool:
    previous = C.avx512_bf16()
    try:
        C.set_avx512_bf16(True)
    except ValueError:
        return False
    C.set_avx512_bf16(previous)
    return True


def _run_with(param, C, monkeypatch):
    """Run the test with one ISA's row kernels (skipped where this CPU / build cannot run it); NaN-poisoned outputs."""
    from lumina_rt.kernels import _common

    name, hw_bf16 = param
    if name not in C.supported_isas():
        pytest.skip(f"this CPU / build cannot run {name}; it runs {C.supported_isas()}")
    if hw_bf16 and not has_avx512_bf16(C):
        pytest.skip("this CPU has no AVX512-BF16")
    monkeypatch.setattr(_common, "POISON_OUTPUTS", True)
    with using(C, name, hw_bf16):
        yield param


@pytest.fixture(params=ISAS)
def isa(request, C, monkeypatch):
    yield from _run_with(request.param, C, monkeypatch)


@pytest.fixture(params=[p for p in ISAS if p.values[0][0] != "portable"])
def vector_isa(request, C, monkeypatch):
    """The SIMD ISAs only (the portable kernels have no streaming stores)."""
    yield from _run_with(request.param, C, monkeypatch)


def assert_near_portable(C, out: torch.Tensor, run, what: str) -> None:
    """`out` is within two roundings of its dtype of the portable path's result (`run()` under the portable ISA):
    the ISAs sum rows in different orders and fuse multiply-adds, nothing more."""
    with using(C, "portable"):
        base = run()
    ulp, a, b = ULP[out.dtype], out.float(), base.float()
    bound = 2 * ulp * (b.abs() + b.abs().max())
    far = int((~((a - b).abs() <= bound)).sum())  # NaN counts as far
    assert far == 0, f"{what}: {far} of {a.numel()} elements differ from the portable path by more than 2 roundings"


# the modulation tests' shapes plus rows shorter than one vector and odd tails
MOD_SHAPES = tmod.SHAPES + [(2, 3, 5), (1, 4, 23)]


@pytest.mark.parametrize("shape", MOD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype, atol", DTYPES)
def test_modulation_ops(isa, C, cpu, shape, dtype, atol):
    x, y, w, s, g = tmod._inputs(shape, dtype, 40, "cpu")
    cases = [
        ("rmsnorm_modulate", cpu.rmsnorm_modulate, (x, w, s), modulate.rmsnorm_modulate_ref,
         ops._rmsnorm_modulate_torch),
        ("gated_residual", cpu.gated_residual, (x, y, w, g), modulate.gated_residual_ref, ops._gated_residual_torch),
        ("layernorm_modulate", cpu.layernorm_modulate, (x, s), modulate.layernorm_modulate_ref,
         ops._layernorm_modulate_torch),
    ]  # fmt: skip
    for name, fn, args, ref_fn, torch_fn in cases:
        out = fn(*args, EPS)
        check_rule(out, ref_fn(*[a.double() for a in args], EPS), torch_fn(*args, EPS), atol, f"{name} {isa}")
        assert_near_portable(C, out, lambda fn=fn, args=args: fn(*args, EPS), f"{name} {isa}")


def test_mixed_dtypes_and_strides(isa, C, cpu):
    """bfloat16 activations with float32 residual / weights (float32 out), token-sliced (strided) inputs."""
    x, y, w, s, g = tmod._inputs((2, 19, 200), torch.bfloat16, 43, "cpu")
    xs, ys, wf, sf, gf = x[:, 3:14].float(), y[:, 2:13], w.float(), s.float(), g.float()
    cases = [
        ("rmsnorm_modulate", cpu.rmsnorm_modulate, (ys, wf, sf), modulate.rmsnorm_modulate_ref,
         ops._rmsnorm_modulate_torch),
        ("gated_residual", cpu.gated_residual, (xs, ys, wf, gf), modulate.gated_residual_ref,
         ops._gated_residual_torch),
        ("layernorm_modulate", cpu.layernorm_modulate, (ys, sf), modulate.layernorm_modulate_ref,
         ops._layernorm_modulate_torch),
    ]  # fmt: skip
    for name, fn, args, ref_fn, torch_fn in cases:
        out = fn(*args, EPS)
        assert out.dtype == torch.float32, name
        check_rule(out, ref_fn(*[a.double() for a in args], EPS), torch_fn(*args, EPS), 1e-5, f"{name} {isa}")
        assert_near_portable(C, out, lambda fn=fn, args=args: fn(*args, EPS), f"{name} {isa}")


# the RoPE tests' shapes plus a head of 10 pairs (vectors of 8 / 4 pairs, then leftover pairs)
ROPE_SHAPES = trope.SHAPES + [(1, 3, 2, 1, 20)]


@pytest.mark.parametrize("shape", ROPE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype, atol", DTYPES)
def test_rope_qk(isa, C, cpu, shape, dtype, atol):
    q, k, cos, sin = trope._inputs(shape, dtype, True, 44, "cpu")
    qo, ko = cpu.rope_qk(q, k, cos, sin)
    qr, kr = rope.rope_qk_ref(*[t.double() for t in (q, k, cos, sin)])
    qt, kt = ops._rope_qk_torch(q, k, cos, sin)
    check_rule(qo, qr, qt, atol, f"rope_qk q {isa}")
    check_rule(ko, kr, kt, atol, f"rope_qk k {isa}")
    assert_near_portable(C, qo, lambda: cpu.rope_qk(q, k, cos, sin)[0], f"rope_qk q {isa}")
    assert_near_portable(C, ko, lambda: cpu.rope_qk(q, k, cos, sin)[1], f"rope_qk k {isa}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_streaming_stores(vector_isa, C, cpu, dtype):
    """Outputs of 16 MiB and more take the vector kernels' non-temporal stores."""
    isa = vector_isa
    wide = dtype == torch.float32  # 4-byte elements: half the rows make 16 MiB
    x, y, w, s, g = tmod._inputs((1, 2048 if wide else 4096, 2048), dtype, 45, "cpu")
    q, k, cos, sin = trope._inputs((1, 4096, 8 if wide else 16, 8, 144), dtype, False, 46, "cpu")
    runs = {
        "rmsnorm_modulate": lambda: cpu.rmsnorm_modulate(x, w, s, EPS),
        "gated_residual": lambda: cpu.gated_residual(x, y, w, g, EPS),
        "layernorm_modulate": lambda: cpu.layernorm_modulate(x, s, EPS),
        "rope_qk": lambda: cpu.rope_qk(q, k, cos, sin)[0],
    }
    for name, run in runs.items():
        out = run()
        assert out.numel() * out.element_size() >= 16 << 20, name
        assert_near_portable(C, out, run, f"{name} {isa}")


def test_rope_qk_layernorm(isa, cpu):
    """The portable code compiled for each ISA against the float64 reference."""
    q, k, cos, sin = trope._inputs((1, 5, 4, 2, 144), torch.bfloat16, True, 47, "cpu")
    params = trope._ln_params(4, 2, 144, gen(48), "cpu")
    qo, ko = cpu.rope_qk_layernorm(q, k, cos, sin, *params, EPS)
    qr, kr = rope.rope_qk_layernorm_ref(*[t.double() for t in (q, k, cos, sin, *params)], EPS)
    qt, kt = trope._ln_rope_torch(q, k, cos, sin, *params, EPS)
    check_rule(qo, qr, qt, 1e-2, "rope_qk_layernorm q")
    check_rule(ko, kr, kt, 1e-2, "rope_qk_layernorm k")


@pytest.mark.parametrize("combo", tpatch.COMBOS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_patchify_unpatchify(isa, cpu, combo, dtype):
    """Each ISA's build of the data movement equals PyTorch's bit for bit, round trip included."""
    for shape in tpatch.SHAPES:
        x = tpatch._latent(shape, dtype, 52, "cpu")
        tokens = cpu.patchify(x, *combo)
        assert torch.equal(tokens, ops._patchify_torch(x, *combo)), shape
        assert torch.equal(cpu.unpatchify(tokens, *shape[2:], *combo), x), shape


def convert(C, x: torch.Tensor, to: torch.dtype, isa: str, pad: int = 0) -> torch.Tensor:
    """`_C.convert` with the converters of `isa` into a NaN-filled buffer of x.numel() + pad elements."""
    out = torch.full((x.numel() + pad,), float("nan"), dtype=to)
    C.convert(x.data_ptr(), CODES[x.dtype], out.data_ptr(), CODES[to], x.numel(), isa=isa)
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_conversions_bit_exact(isa, C, dtype):
    """Each ISA's float16 / bfloat16 <-> float32 converters equal PyTorch's on every 16-bit pattern, every midpoint
    (ties to even), subnormals, overflow, inf and NaN; except that AVX512-BF16 flushes float32 subnormals to zero."""
    name, hw_bf16 = isa
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    wide = convert(C, every, torch.float32, name)
    same = (wide.view(torch.int32) == every.float().view(torch.int32)) | (wide.isnan() & every.isnan())
    assert bool(same.all()), f"{int((~same).sum())} widenings differ"
    finite = every.float()[every.isfinite()].double().unique()  # sorted
    x = torch.cat([
        ((finite[1:] + finite[:-1]) / 2).float(),  # exact midpoints
        torch.randn(1 << 16, generator=gen(50)) * torch.logspace(-30, 30, 1 << 16, base=2.0),
        torch.tensor([float("inf"), -float("inf"), float("nan"), 65504.0, 65519.99, 65520.0, 0.0, -0.0, 2.0**-25,
                      1e-40, -1e-40, 2.0**-149]),
    ])  # fmt: skip
    narrow, expected = convert(C, x, dtype, name), x.to(dtype)
    if hw_bf16 and dtype == torch.bfloat16:
        subnormal = (x != 0) & (x.abs() < 2.0**-126)
        expected[subnormal] = (x[subnormal] * 0).to(dtype)  # zero of x's sign
    same = (narrow.view(torch.int16) == expected.view(torch.int16)) | (narrow.isnan() & expected.isnan())
    assert bool(same.all()), f"{int((~same).sum())} of {x.numel()} narrowings differ"


def test_conversion_tails_stay_in_bounds(isa, C):
    """Rows of every length up to 2.5 vectors: all n elements written, nothing past them (masked / buffered tails)."""
    name, _ = isa
    for n in range(1, 41):
        x = torch.randn(n, generator=gen(n))
        for to in (torch.float32, torch.float16, torch.bfloat16):
            out = convert(C, x, to, name, pad=17)
            assert torch.equal(out[:n], x.to(to)), (n, to)
            assert bool(out[n:].isnan().all()), f"n={n} {to}: wrote past the end"


def cpu_flags() -> set[str]:
    """The CPU flags Linux reports (/proc/cpuinfo), empty where there is none."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return set()
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_supported_isas_follow_the_cpu(C):
    """CPUID detection (GCC's __builtin_cpu_supports) agrees with the flags the kernel reports; best ISA first."""
    if platform.machine() not in ("x86_64", "AMD64"):
        assert C.supported_isas() == ["portable"]
        return
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    expected = ["avx512"] if {"avx512f", "avx512bw", "avx512vl"} <= flags else []
    expected += ["avx2"] if {"avx2", "fma", "f16c"} <= flags else []
    assert C.supported_isas() == [*expected, "portable"]
    assert has_avx512_bf16(C) == ("avx512" in expected and "avx512_bf16" in flags)


def test_set_isa_and_the_compatibility_switch(C):
    with using(C, C.isa()):
        for name in C.supported_isas():
            C.set_isa(name)
            assert C.isa() == name and C.get_simd() == (name != "portable")
        C.set_simd(False)
        assert C.isa() == "portable"
        C.set_simd(True)
        assert C.isa() == C.supported_isas()[0]
    assert C.simd_available() == (C.supported_isas()[0] != "portable")


def test_bad_isa_names_the_value(C, cpu, monkeypatch):
    supported = ", ".join(C.supported_isas())
    before = C.isa()
    with pytest.raises(ValueError, match=rf"unknown ISA 'avx3' \(known: avx512, avx2, portable\); supported here: "
                                         rf"{supported}$"):  # fmt: skip
        C.set_isa("avx3")
    for name in set(KNOWN) - set(C.supported_isas()):
        with pytest.raises(ValueError, match=rf"ISA '{name}' cannot run on this CPU / build; supported here"):
            C.set_isa(name)
    with pytest.raises(ValueError, match=r"unknown ISA 'sse9'"):
        C.convert(0, 0, 0, 0, 0, isa="sse9")
    monkeypatch.setenv("LUMINA_RT_CPU_ISA", "AVX-512")
    with pytest.raises(ConfigError, match=r"LUMINA_RT_CPU_ISA='AVX-512': unknown ISA 'AVX-512'"):
        cpu._isa_from_env()
    assert C.isa() == before


def _python(code: str, env_isa: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LUMINA_RT_CPU_ISA": env_isa}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)


def test_env_forces_the_portable_path(C, cpu, tmp_path):
    """A fresh process with LUMINA_RT_CPU_ISA=portable runs the portable kernels: same bits as portable here."""
    x, _, w, s, _ = tmod._inputs((2, 9, 100), torch.bfloat16, 51, "cpu")
    torch.save((x, w, s), tmp_path / "in.pt")
    code = (
        "import sys, torch\n"
        "from lumina_rt.kernels import cpu\n"
        "from lumina_rt import _C\n"
        "x, w, s = torch.load(sys.argv[1])\n"
        "torch.save((_C.isa(), cpu.rmsnorm_modulate(x, w, s, float(sys.argv[3]))), sys.argv[2])\n"
    )
    done = _python(code, "portable", str(tmp_path / "in.pt"), str(tmp_path / "out.pt"), repr(EPS))
    assert done.returncode == 0, done.stderr
    name, out = torch.load(tmp_path / "out.pt")
    assert name == "portable"
    with using(C, "portable"):
        assert torch.equal(out, cpu.rmsnorm_modulate(x, w, s, EPS))


def test_env_with_a_bad_isa_fails_the_import():
    done = _python("import lumina_rt.kernels.cpu", "avx1024")
    assert done.returncode != 0
    assert "ConfigError: LUMINA_RT_CPU_ISA='avx1024': unknown ISA 'avx1024'" in done.stderr, done.stderr


def test_default_build_is_portable(C):
    """Built for the baseline target, without -march=native, unless LUMINA_RT_MARCH_NATIVE=1 (set it here too when
    testing such a build)."""
    native = os.environ.get("LUMINA_RT_MARCH_NATIVE") == "1"
    info = C.build_info()
    assert info["march_native"] is native, info
    if not native:
        assert info["baseline_isa"] == "portable", info
