#!/usr/bin/env bash
# Install lumina_rt from this clone (editable) and build its C++ ops.
#
#   bash scripts/install.sh            lumina_rt + ONNX Runtime (what `lumina-rt generate` needs)
#   bash scripts/install.sh --dev      + the test suite's tools (pytest, ruff, basedpyright, Triton, TensorRT stubs)
#   bash scripts/install.sh --torch-only   only the torch step below (prints what it decided)
#
# torch: an installed torch that satisfies pyproject.toml's range (any build: CPU, CUDA, ROCm) is kept as it is.
# With no torch, `$LUMINA_RT_TORCH` is installed (default torch==2.13.0: a machine of this project's kind holds that
# CPU wheel on local disk, and pip resolves torch's own dependencies from the configured index as usual). A torch
# outside the range is an error, unless LUMINA_RT_REPLACE_TORCH=1 says to replace it.
#
# Environment (all optional):
#   PYTHON                    interpreter to install into (default: python3, i.e. the active venv's)
#   LUMINA_RT_TORCH           pip requirement used when no torch is installed (default: torch==2.13.0)
#   LUMINA_RT_REPLACE_TORCH=1 replace an installed torch outside the supported range with $LUMINA_RT_TORCH
#   LUMINA_RT_EXTRAS          extras of lumina-rt to install (default: onnx, or onnx-gpu where onnxruntime-gpu is
#                             installed, and serve; --dev adds triton,dev). Set it empty for the base install (torch engines).
#   LUMINA_RT_MARCH_NATIVE=1  build the C++ ops with -march=native (default: portable, ISA chosen at run time)
#   LUMINA_RT_NO_CPP=1        do not build the C++ ops
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=${1:-}
case "$MODE" in
  "" | --dev | --torch-only) ;;
  *) echo "install.sh: unknown option '$MODE' (use --dev or --torch-only)" >&2; exit 2 ;;
esac

# ---------------------------------------------------------------------------------------------------- torch
# The range comes from pyproject.toml ("torch>=X.Y"); the installed version is read from its metadata, so a torch
# that cannot be imported here (no GPU driver, say) is still recognised and kept.
decision=$("$PY" - <<'PY'
import importlib.metadata as md, re, pathlib, sys
m = re.search(r'"torch>=(\d+)\.(\d+)', pathlib.Path("pyproject.toml").read_text())
low = (int(m.group(1)), int(m.group(2)))
try:
    v = md.version("torch")
except md.PackageNotFoundError:
    print(f"missing - {low[0]}.{low[1]}")
    sys.exit()
parts = re.match(r"(\d+)\.(\d+)", v)
ok = parts is not None and (int(parts.group(1)), int(parts.group(2))) >= low
print(f"{'keep' if ok else 'old'} {v} {low[0]}.{low[1]}")
PY
)
read -r state version low <<<"$decision"
want=${LUMINA_RT_TORCH:-torch==2.13.0}
case "$state" in
  keep)
    echo "torch: keeping the installed torch $version (supported: >= $low)" ;;
  missing)
    echo "torch: none installed; installing $want"
    "$PY" -m pip install -q "$want" ;;
  old)
    if [ "${LUMINA_RT_REPLACE_TORCH:-0}" != "1" ]; then
      echo "install.sh: the installed torch $version is older than lumina_rt supports (>= $low); it was left as it" \
        "is. Upgrade it yourself, or set LUMINA_RT_REPLACE_TORCH=1 to replace it with $want." >&2
      exit 1
    fi
    echo "torch: replacing torch $version with $want (LUMINA_RT_REPLACE_TORCH=1)"
    "$PY" -m pip install -q "$want" ;;
esac
[ "$MODE" = "--torch-only" ] && exit 0

# ---------------------------------------------------------------------------------------------------- lumina_rt
if [ -z "${LUMINA_RT_EXTRAS+set}" ]; then
  if "$PY" -c "import importlib.metadata as m; m.version('onnxruntime-gpu')" 2>/dev/null; then
    LUMINA_RT_EXTRAS=onnx-gpu,serve  # never pull the CPU onnxruntime over a GPU one (they share the module name)
  else
    LUMINA_RT_EXTRAS=onnx,serve
  fi
  [ "$MODE" = "--dev" ] && LUMINA_RT_EXTRAS="$LUMINA_RT_EXTRAS,triton,dev"
fi
target="."
[ -n "$LUMINA_RT_EXTRAS" ] && target=".[$LUMINA_RT_EXTRAS]"
"$PY" -m pip install -q "setuptools>=68" wheel "pybind11>=2.12"
# --no-build-isolation: build the C++ extension with the tools just installed (no second download). Every
# dependency, torch included, is already satisfied or resolved by pip as usual: nothing installed is replaced.
echo "lumina_rt: installing $target (editable)"
"$PY" -m pip install -q --no-build-isolation -e "$target"
if [ "$MODE" = "--dev" ]; then
  # Type stubs for the TensorRT code (TensorRT itself cannot be installed here). --no-deps: without it pip would
  # try to build the TensorRT meta-package, which downloads from a registry that is not reachable.
  "$PY" -m pip install -q --no-deps "tensorrt-stubs==10.13.0.35.1"
fi
command -v pyenv >/dev/null 2>&1 && pyenv rehash  # pyenv: make the new `lumina-rt` command visible
"$PY" - <<'PY'
import lumina_rt
try:
    from lumina_rt.kernels import cpu  # noqa: F401
    ops = "with C++ ops"
except ImportError as exc:
    ops = f"without C++ ops ({exc})"
print(f"lumina_rt {lumina_rt.__version__} installed {ops}")
PY
