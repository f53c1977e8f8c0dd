"""Engine directories built once per test session and shared by the engine test modules.

Builds are memoised here (not in a pytest fixture per module), so importing modules share one build each.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from lumina_rt.checkpoint import save_native
from lumina_rt.engines.profiles import ServeShapes
from lumina_rt.export.build_engines import BuildReport, build
from lumina_rt.parity import load_fixture
from tests._fixture_gen import EXTRA_CONFIGS, make_fixture
from tests._paths import PUBLIC_FIXTURE, require

_ROOT: list[Path] = []
_BUILT: dict[str, tuple[Path, Path, BuildReport]] = {}  # name -> (checkpoint, engine dir, first build report)


def root() -> Path:
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="lumina_rt_engine_tests_")))
        atexit.register(shutil.rmtree, _ROOT[0], True)
    return _ROOT[0]


def fixture_path(name: str) -> Path:
    """The public fixture ("public") or a generated one (a key of EXTRA_CONFIGS), made on first use."""
    if name == "public":
        return require(PUBLIC_FIXTURE)
    path = root() / f"fixture_{name}.safetensors"
    if not path.is_file():
        make_fixture(path, EXTRA_CONFIGS[name], seed=sorted(EXTRA_CONFIGS).index(name) + 1)
    return path


def engines(name: str, shapes: ServeShapes | None = None) -> tuple[Path, Path, BuildReport]:
    """(checkpoint dir, engine dir, report of the first build) for a fixture's weights, ONNX Runtime backend."""
    if name not in _BUILT:
        fx = load_fixture(fixture_path(name))
        ckpt = save_native(root() / f"ckpt_{name}", fx.config, fx.state_dict)
        out = root() / f"engines_{name}"
        report = build(ckpt, out, target="onnx", shapes=shapes, measure=False)
        _BUILT[name] = (ckpt, out, report)
    return _BUILT[name]
