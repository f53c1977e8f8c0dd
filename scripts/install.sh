#!/usr/bin/env bash
# Install lumina_rt and its development tools on a fresh CPU machine.
# torch is pinned to the local CPU wheel first, so no later step can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  wheels=${LUMINA_RT_TORCH_WHEELS:-/opt/wheels}
  echo "installing torch 2.13.0 (CPU) from $wheels"
  "$PY" -m pip install --no-index --find-links "$wheels" "torch==2.13.0"
fi
"$PY" -m pip install -q "setuptools>=68" wheel "pybind11>=2.12"
# --no-build-isolation: build the C++ extension against the tools just installed (no second download).
"$PY" -m pip install -q --no-build-isolation -e ".[dev]"
# Type stubs for the TensorRT code (TensorRT itself cannot be installed here). --no-deps: without it pip
# would try to build the TensorRT meta-package, which downloads from a registry that is not reachable.
"$PY" -m pip install -q --no-deps "tensorrt-stubs==10.13.0.35.1"
"$PY" -c "import lumina_rt, lumina_rt._C; print('lumina_rt', lumina_rt.__version__, 'installed with C++ ops')"
