# The README's test command is `make test`: it installs the test tools first when they are missing.
PY ?= python3

.PHONY: install dev-deps test lint format typecheck pytest bench gpu-check

install:
	bash scripts/install.sh

dev-deps:
	@$(PY) -c "import pytest, pytest_benchmark, ruff, basedpyright, triton, onnx, onnxscript, onnxruntime, fastapi, openai, httpx, selenium, schemathesis, ray.serve, matplotlib" 2>/dev/null \
		|| PYTHON=$(PY) bash scripts/install.sh --dev

test: dev-deps lint typecheck pytest

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

typecheck:
	PYTHON=$(PY) bash tools/typecheck_trt.sh

pytest:
	$(PY) -m pytest tests -q

bench:
	$(PY) -m pytest bench -q

gpu-check:
	$(PY) bench/gpu_check.py
