# The README's test command is `make test`.
PY ?= python3

.PHONY: install test lint format typecheck pytest bench gpu-check

install:
	bash scripts/install.sh

test: lint typecheck pytest

lint:
	ruff check .
	ruff format --check .

format:
	ruff format .
	ruff check --fix .

typecheck:
	bash tools/typecheck_trt.sh

pytest:
	$(PY) -m pytest tests -q

bench:
	$(PY) -m pytest bench -q

gpu-check:
	$(PY) bench/gpu_check.py
