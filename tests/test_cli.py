"""The `lumina-rt` commands as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from tests._paths import OFFICIAL_KEYS, PUBLIC_FIXTURE, require


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumina_rt.cli", *args], capture_output=True, text=True, timeout=600)


def test_parity_command_passes_on_public_fixture():
    res = _run("parity", str(require(PUBLIC_FIXTURE)), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["passed"] and len(report["cases"]) == 16
    assert report["max_rel_err"] <= 1e-5


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
