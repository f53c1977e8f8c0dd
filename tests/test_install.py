"""scripts/install.sh keeps a user's torch: checked in throwaway venvs holding a stand-in torch distribution.

The stand-in is a real wheel (dist-info + a `torch` package with `__version__`), so pip and install.sh see it exactly
as they see a CUDA or older torch; nothing multi-GB is downloaded. Each venv is made with pip and no packages from
this interpreter.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests._paths import REPO

INSTALL = REPO / "scripts" / "install.sh"


def fake_torch_wheel(folder: Path, version: str) -> Path:
    """A minimal, valid wheel named torch with this version."""
    files = {
        "torch/__init__.py": f'__version__ = "{version}"\n',
        f"torch-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
        f"torch-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"torch-{version}.dist-info/RECORD,,")
    files[f"torch-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = folder / f"torch-{version.replace('-', '_')}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@pytest.fixture(scope="module")
def venv_factory(tmp_path_factory):
    def make(name: str, torch_version: str | None) -> Path:
        root = tmp_path_factory.mktemp(name)
        subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
        py = root / "venv" / "bin" / "python"
        if torch_version is not None:
            wheel = fake_torch_wheel(root, torch_version)
            subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
        return py

    return make


def run_install(py: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LUMINA_RT_")}
    environ.update(PYTHON=str(py), **env)
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, env=environ, cwd="/")


def torch_version(py: Path) -> str:
    out = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return out.stdout.strip()


@pytest.mark.parametrize("version", ["2.12.0+cu126", "2.11.0"])
def test_install_keeps_a_torch_in_range(venv_factory, version):
    py = venv_factory("keep", version)
    res = run_install(py, "--torch-only")
    assert res.returncode == 0, res.stderr
    assert f"keeping the installed torch {version}" in res.stdout
    assert torch_version(py) == version


def test_install_refuses_to_replace_an_old_torch(venv_factory, tmp_path):
    py = venv_factory("old", "2.2.0")
    res = run_install(py, "--torch-only")
    assert res.returncode == 1
    assert "2.2.0" in res.stderr and "LUMINA_RT_REPLACE_TORCH=1" in res.stderr
    assert torch_version(py) == "2.2.0"
    # with the explicit flag it is replaced by what LUMINA_RT_TORCH names (here a stand-in wheel)
    wheel = fake_torch_wheel(tmp_path, "2.13.0")
    res = run_install(py, "--torch-only", LUMINA_RT_REPLACE_TORCH="1", LUMINA_RT_TORCH=str(wheel))
    assert res.returncode == 0, res.stderr
    assert torch_version(py) == "2.13.0"


def test_install_without_torch_installs_the_requested_one(venv_factory, tmp_path):
    py = venv_factory("missing", None)
    wheel = fake_torch_wheel(tmp_path, "2.13.0")
    res = run_install(py, "--torch-only", LUMINA_RT_TORCH=str(wheel))
    assert res.returncode == 0, res.stderr
    assert "none installed" in res.stdout
    assert torch_version(py) == "2.13.0"


def test_unknown_option_is_refused(venv_factory):
    res = run_install(Path(sys.executable), "--gpu")
    assert res.returncode == 2 and "--gpu" in res.stderr


@pytest.mark.slow
def test_pip_resolution_keeps_a_cuda_torch(venv_factory, tmp_path):
    """What install.sh asks pip for next (lumina-rt with its onnx extra) resolves without touching torch."""
    py = venv_factory("resolve", "2.12.0+cu126")
    report = tmp_path / "report.json"
    res = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--dry-run", "--report", str(report), f"{REPO}[onnx]"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    planned = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "lumina-rt" in planned and "onnxruntime" in planned
    assert "torch" not in planned and not any(n.startswith("nvidia-") for n in planned)
    assert torch_version(py) == "2.12.0+cu126"
