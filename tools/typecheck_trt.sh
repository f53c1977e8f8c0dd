#!/usr/bin/env bash
# Type-check the TensorRT code against the TensorRT 10 API without TensorRT: basedpyright + tensorrt-stubs.
#
# TensorRT itself cannot be installed on the CPU machines, so its code (export/tensorrt_build.py,
# lumina_rt/engines/tensorrt*.py) is checked against the `tensorrt-stubs` package: its `tensorrt` and
# `tensorrt_bindings` folders are copied into a stubPath, and basedpyright (it ships its own node and works
# offline) checks the files. mypy cannot read these stubs (a parameter named `in`). Exits non-zero on errors.
#
#   TRT_STUBS_VERSION=10.13.0.35.1  LUMINA_RT_TYPECHECK_DIR=<work dir, default $TMPDIR/lumina_rt_typecheck_trt>
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STUBS_VERSION=${TRT_STUBS_VERSION:-10.13.0.35.1}
WORK=${LUMINA_RT_TYPECHECK_DIR:-${TMPDIR:-/tmp}/lumina_rt_typecheck_trt}
FILES=(export/tensorrt_build.py lumina_rt/engines/tensorrt*.py)

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# The stubs: use an installed copy when there is one, else install them (no deps: the TensorRT meta-package they
# depend on downloads from a registry that is not reachable) into a private folder, not into site-packages.
src=$("$PY" - <<'PY'
import importlib.util, pathlib, sys
for path in sys.path:
    p = pathlib.Path(path or ".") / "tensorrt_bindings" / "tensorrt.pyi"
    if p.is_file() and (p.parent.parent / "tensorrt" / "__init__.pyi").is_file():
        print(p.parent.parent)
        break
PY
)
if [ -z "$src" ]; then
  if [ ! -f "$WORK/pkgs/tensorrt_bindings/tensorrt.pyi" ]; then
    echo "installing tensorrt-stubs==$STUBS_VERSION (--no-deps) into $WORK/pkgs"
    "$PY" -m pip install -q --no-deps --target "$WORK/pkgs" "tensorrt-stubs==$STUBS_VERSION"
  fi
  src="$WORK/pkgs"
fi
rm -rf "$WORK/stubs"
mkdir -p "$WORK/stubs"
cp -r "$src/tensorrt" "$src/tensorrt_bindings" "$WORK/stubs/"

if ! command -v basedpyright >/dev/null 2>&1; then
  echo "installing basedpyright"
  "$PY" -m pip install -q basedpyright
fi

site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cat > "$WORK/pyrightconfig.json" <<JSON
{
  "stubPath": "$WORK/stubs",
  "extraPaths": ["$PWD", "$site"],
  "pythonVersion": "3.10",
  "typeCheckingMode": "standard",
  "reportMissingModuleSource": "none",
  "reportMissingTypeStubs": "none"
}
JSON
files=()
for f in "${FILES[@]}"; do files+=("$PWD/$f"); done
echo "basedpyright on ${FILES[*]} (stubs: tensorrt-stubs from $src)"
basedpyright --project "$WORK/pyrightconfig.json" --pythonpath "$(command -v "$PY")" "${files[@]}"
