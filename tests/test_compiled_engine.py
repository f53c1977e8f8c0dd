"""The compiled torch engine backends (lumina_rt/engines/compiled_engine.py): parity, the measured compile time,
what they do where they cannot compile, the compile cache folder and mode.

Compiling costs tens of seconds per graph on a small CPU, so the models are the fixtures' tiny ones and every test
of this module shares one inductor cache folder (a second compile of the same graph is a cache hit).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lumina_rt.engines import BACKENDS, UNMEASURED_ORDER, compiled_engine
from lumina_rt.engines.engine_set import EngineSet
from lumina_rt.engines.measure import NOT_ASKED, measure_backends, ranking_lines
from lumina_rt.engines.profiles import ServeShapes
from lumina_rt.errors import BackendUnavailableError
from lumina_rt.export.build_engines import build
from lumina_rt.parity import load_fixture, run_parity
from lumina_rt.runtime import Runtime
from tests._engine_fixtures import engines, fixture_path
from tests._fixture_gen import EXTRA_CONFIGS

CLI = [sys.executable, "-m", "lumina_rt"]


@pytest.fixture(scope="module", autouse=True)
def inductor_cache(tmp_path_factory):
    """One inductor cache folder for the module (not the user's ~/.cache/lumina_rt/inductor)."""
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor"))
    yield Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    if before is None:
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def _require_compiler(eng: Path) -> None:
    reason = EngineSet(eng, backend="torch", scales=[]).unavailable("torch-compiled")
    if reason:
        pytest.skip(f"torch-compiled cannot run here: {reason}")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """Torch engines of the public fixture's weights serving one small shape (8 frames of 16x16)."""
    ckpt, _, _ = engines("public")
    out = tmp_path_factory.mktemp("small") / "eng"
    build(ckpt, out, target="torch", shapes=ServeShapes(resolutions=((16, 16),), frames=(8,), max_batch=2),
          measure=False)  # fmt: skip
    return out


def _one_scale(eng: Path, out: Path, combo: str = "2x4") -> Path:
    """A copy of an engine directory that serves only `combo` (a measure of one scale compiles one graph)."""
    shutil.copytree(eng, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["scales"] = {combo: manifest["scales"][combo]}
    manifest.pop("ranking", None)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["public", *sorted(EXTRA_CONFIGS)])
def test_compiled_engines_pass_every_fixture(name):
    """fp32 within 1e-5 of the released code on every case (forward, lists of sizes, multi-CFG, a sampled run)."""
    _, eng, _ = engines(name)
    _require_compiler(eng)
    fx = load_fixture(fixture_path(name))
    rt = Runtime(eng, backend="torch-compiled")
    assert rt.engines.backend_name == "torch-compiled"
    results = run_parity(fx, rt.parity_target())
    assert {r.kind for r in results} == {"forward", "forward_list", "forward_with_multi_cfg", "sample_euler"}
    worst = max(results, key=lambda r: r.rel_err)
    assert worst.rel_err <= 1e-5, worst


def test_measure_only_measures_the_compiled_backend_when_asked(small, tmp_path, inductor_cache):
    """`lumina-rt build --measure-only DIR --measure-compiled` ranks torch-compiled with its compile time; without
    the flag it is listed as not measured, saying how to ask for it."""
    _require_compiler(small)
    one = _one_scale(small, tmp_path / "eng")
    plain = measure_backends(one, json.loads((one / "manifest.json").read_text()), steps=1)
    assert plain["not_measured"]["torch-compiled"] == NOT_ASKED
    assert all("compile_s" not in r for r in plain["scales"]["2x4"])
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)}
    res = subprocess.run(
        [*CLI, "build", "--measure-only", str(one), "--measure-compiled", "--measure-steps", "1"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert re.search(r"\d\. torch-compiled [0-9.]+ ms \(compiled in [0-9.]+ s\)", res.stdout), res.stdout
    rows = json.loads((one / "manifest.json").read_text())["ranking"]["scales"]["2x4"]
    compiled = {r["backend"]: r.get("compile_s") for r in rows}
    assert compiled["torch-compiled"] > 0 and compiled["torch"] is None
    assert "torch-compiled" not in json.loads((one / "manifest.json").read_text())["ranking"]["not_measured"]


def test_a_compile_that_cannot_run_is_unavailable_and_auto_falls_back(small, tmp_path, monkeypatch):
    """No C++ compiler: the backend is unavailable with the reason, and auto takes the next backend even where the
    ranking put torch-compiled first; a compile failing at its first call is a BackendUnavailableError, and the
    measure stage lists it as not measured instead of failing."""
    eng = small
    _require_compiler(eng)
    monkeypatch.setenv("CXX", "no-such-compiler-c++")
    compiled_engine._cxx_reason.cache_clear()
    try:
        with pytest.raises(BackendUnavailableError, match="no C.. compiler 'no-such-compiler-c..'"):
            EngineSet(eng, backend="torch-compiled")
        manifest = json.loads((eng / "manifest.json").read_text())
        manifest["ranking"] = {
            "scales": {c: [{"backend": "torch-compiled", "ms": 1.0}, {"backend": "torch", "ms": 2.0}] for c in
                       manifest["scales"]}
        }  # fmt: skip
        auto = EngineSet(eng, manifest=manifest)
        assert set(auto.backends.values()) == {"torch"}
        assert "no C++ compiler" in auto.backend_reasons["torch-compiled"]
    finally:
        monkeypatch.delenv("CXX")
        compiled_engine._cxx_reason.cache_clear()
    # the check passes but the compile itself fails (inductor finds no compiler): a fresh cache, nothing reused
    from torch._inductor import config

    torch._dynamo.reset()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "empty_cache"))
    one = _one_scale(eng, tmp_path / "eng")
    # inductor's own config.patch (a monkeypatch of its config module leaves `cpp.cxx` deleted for later tests)
    with config.patch({"cpp.cxx": ("no-such-compiler-c++",)}):
        ranking = measure_backends(one, json.loads((one / "manifest.json").read_text()), 1, ["torch", "torch-compiled"])
    assert [r["backend"] for r in ranking["scales"]["2x4"]] == ["torch"]
    assert "cannot compile here" in ranking["not_measured"]["torch-compiled"]
    assert any("not measured: torch-compiled" in line for line in ranking_lines(ranking))
    torch._dynamo.reset()


def test_compile_mode_and_cache_folder(small, tmp_path, monkeypatch):
    eng = small
    monkeypatch.setenv(compiled_engine.MODE_ENV, "fastest")
    with pytest.raises(BackendUnavailableError, match="LUMINA_RT_COMPILE_MODE='fastest' is not a torch.compile mode"):
        EngineSet(eng, backend="torch-compiled")
    monkeypatch.setenv(compiled_engine.MODE_ENV, "reduce-overhead")
    assert compiled_engine.compile_mode("cuda") == "reduce-overhead"
    monkeypatch.delenv(compiled_engine.MODE_ENV)
    assert compiled_engine.compile_mode("cuda") == "max-autotune-no-cudagraphs"
    assert compiled_engine.compile_mode("cpu") == "default"
    # the cache: TORCHINDUCTOR_CACHE_DIR when set, else inductor/ in the lumina_rt cache, never the engine directory
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("LUMINA_RT_CACHE", str(tmp_path / "cache"))
    assert compiled_engine.inductor_cache_dir() == tmp_path / "cache" / "inductor"
    monkeypatch.delenv("LUMINA_RT_CACHE")
    assert compiled_engine.inductor_cache_dir() == Path.home() / ".cache" / "lumina_rt" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compiled_engine.inductor_cache_dir() == tmp_path / "mine"


def test_compiled_backends_come_after_the_eager_ones_unmeasured(small):
    """Without a ranking, auto never starts a compile: each compiled backend follows an eager backend of its device
    that always runs."""
    order = list(UNMEASURED_ORDER)
    assert order.index("torch-compiled") > order.index("torch")
    assert order.index("torch-compiled-cuda") > order.index("torch-cuda")
    assert {n for n, b in BACKENDS.items() if b.compiled} == {"torch-compiled", "torch-compiled-cuda"}
    assert "torch-compiled" not in EngineSet(small).backends.values()


def test_gpu_check_plans_and_sections_without_a_gpu():
    """bench/gpu_check.py's CPU-checkable parts: its flags, the released presets' call plans it prices the caching
    section with, and a section that raises is recorded while the next still runs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_check", Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    )
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    args = gpu_check.parse_args(["--skip", "vae", "gemma", "--skip-2b", "--compile-mode", "reduce-overhead"])
    assert set(args.skip) == {"vae", "gemma", "2b"} and args.compile_mode == "reduce-overhead" and args.budget_s == 480
    single, multi = gpu_check.step_plan("f24F96R960"), gpu_check.step_plan("f24F96R960-MultiScale")
    assert len(single) == len(multi) == 69 and sum(rows == 2 for _, rows in single) == 60
    assert {c: sum(combo == c for combo, _ in multi) for c in ("2x4", "2x2", "1x2")} == {
        "2x4": 30,
        "2x2": 24,
        "1x2": 15,
    }
    report: dict = {"2b_gqa": {"rows": [{"combo": "1x2", "batch": 2, "backend": "triton", "ms": 5.0}]}}
    assert gpu_check.measured_step_ms(report) == {("1x2", 2, "triton"): 5.0}
    ran = []
    deadline = float("inf")
    assert not gpu_check.run_section(report, "caching", lambda: 1 / 0, deadline)
    assert gpu_check.run_section(report, "gemma", lambda: ran.append(1), deadline) and ran == [1]
    assert report["errors"] == {"caching": "ZeroDivisionError: division by zero"}
    assert gpu_check.run_section(report, "vae", lambda: ran.append(2), deadline=0.0) and ran == [1]
    assert "budget" in report["skipped"]["vae"]
