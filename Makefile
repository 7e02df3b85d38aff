# The README's two commands: `make demo` (set up, then run the main job) and
# `make test` (set up, then lint, type-check and run the test suite).
.PHONY: setup demo test lint typecheck pytest wheel-check bench clean

VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

setup:
	bash .ci/setup

demo: setup
	$(BIN)/mbrl train pets --preset demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test: lint typecheck pytest

wheel-check: setup
	bash .ci/wheel-check

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
