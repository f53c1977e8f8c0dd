"""The `lumina-rt` commands as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from tests._paths import OFFICIAL_KEYS, PUBLIC_FIXTURE, require


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumina_rt", *args], capture_output=True, text=True, timeout=600)


def test_parity_command_passes_on_public_fixture():
    res = _run("parity", str(require(PUBLIC_FIXTURE)), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["passed"] and len(report["cases"]) == 16
    assert report["max_rel_err"] <= 1e-5


@pytest.mark.parametrize("backend", ["torch", "cpu-fused"])
def test_parity_command_in_bf16(backend):
    """bf16 model (C++ attention kernel with cpu-fused) within the bf16 tolerance, and clearly not fp32-exact."""
    res = _run("parity", str(require(PUBLIC_FIXTURE)), "--precision", "bf16", "--backend", backend, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["passed"] and report["tolerance"] == 2e-2
    assert report["backend"] == backend and report["precision"] == "bf16"
    assert 1e-3 < report["max_rel_err"] <= 2e-2  # bf16 really ran (fp32 is ~1e-6)


def test_parity_command_fails_on_wrong_reference(tmp_path):
    src = require(PUBLIC_FIXTURE)
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["out.forward.2x2"] = tensors["out.forward.2x2"] * (1 + 1e-4)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    res = _run("parity", str(bad))
    assert res.returncode == 1
    assert "FAIL" in res.stdout and "out.forward.2x2" in res.stdout


def test_parity_command_names_a_missing_fixture(tmp_path):
    res = _run("parity", str(tmp_path / "none.safetensors"))
    assert res.returncode == 2 and "none.safetensors" in res.stderr


def test_inspect_matches_released_keys():
    official = json.loads(require(OFFICIAL_KEYS).read_text())
    res = _run("inspect", "f24R960", "--keys", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["parameters"] == official["parameters"] == 1_771_364_672
    assert info["state_dict"] == official["state_dict"]
    for k, v in official["args"].items():
        assert info["config"][k] == v, k


def test_inspect_checkpoint_dir_and_unknown_target(tmp_path):
    from lumina_rt.checkpoint import save_native
    from lumina_rt.config import ModelConfig
    from lumina_rt.model import MultiScaleNextDiT

    cfg = ModelConfig.from_name("tiny")
    save_native(tmp_path / "ck", cfg, MultiScaleNextDiT(cfg).state_dict())
    res = _run("inspect", str(tmp_path / "ck"))
    assert res.returncode == 0 and "parameters:" in res.stdout
    assert f"{sum(p.numel() for p in MultiScaleNextDiT(cfg).parameters()):,}" in res.stdout
    res = _run("inspect", "huge")
    assert res.returncode == 2 and "'huge'" in res.stderr


@pytest.mark.parametrize("backend", ["nonsense"])
def test_parity_rejects_unknown_backend(backend):
    res = _run("parity", str(require(PUBLIC_FIXTURE)), "--backend", backend)
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_one_command_table_and_the_library_never_imports_the_cli():
    import lumina_rt
    from lumina_rt.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    assert {"parity", "inspect", "build", "generate", "train", "make-data", "eval", "generate-reference"} <= set(
        COMMANDS
    )
    root = Path(lumina_rt.__file__).parent
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("cli/") or rel == "__main__.py":
            continue
        text = path.read_text()
        assert "lumina_rt.cli" not in text, rel
        # argparse only in the CLI; the checkpoint loader names argparse.Namespace to unpickle released args
        assert "import argparse" not in text or rel == "checkpoint.py", rel


def test_python_dash_m_lumina_rt_lists_every_command():
    from lumina_rt.cli import COMMANDS

    res = _run("--help")
    assert res.returncode == 0, res.stderr
    assert all(name in res.stdout for name in COMMANDS)
