# dicom-ai: the two commands a newcomer needs are `make install run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run demo test test-unit test-e2e test-long typecheck models clean bench

$(BIN)/dicom-ai: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned to the CPU build in pyproject.toml; install it first so nothing pulls CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	# The ray extra too: the Ray executor's tests (marker ray) run in `make test`, never skipped.
	$(BIN)/pip install --quiet -e '.[test,ray]'
	touch $@

install: $(BIN)/dicom-ai

run: install
	$(BIN)/dicom-ai serve

# A local Orthanc, the node and a handful of studies; prints where to look (Ctrl-C stops all).
demo: install
	$(BIN)/dicom-ai demo

test: install
	$(BIN)/python -m pytest

# The type-check gate CI runs before the tests (settings in pyproject.toml, [tool.mypy]).
typecheck: install
	$(BIN)/python -m mypy

test-unit: install
	$(BIN)/python -m pytest -m "not e2e"

test-e2e: install
	$(BIN)/python -m pytest -m e2e

# Long runs: each atheris target for FUZZ_SECONDS, and KILLS random kill -9s of the node under load
# (the normal suite runs a few seconds of each target and 20 kills).
FUZZ_SECONDS ?= 300
KILLS ?= 100
test-long: install
	FUZZ_SECONDS=$(FUZZ_SECONDS) DICOM_AI_TEST_KILLS=$(KILLS) $(BIN)/python -m pytest tests/fuzz \
		tests/integration/test_random_kills.py

# Retrain the demo models from synthetic data (reproducible: fixed seeds).
models: install
	$(BIN)/dicom-ai train demo all --out models

# Benchmarks (ratios against storescp and Orthanc, not tests): bench/results/latest.{json,md}; BENCH_SCALE=0.1 for a quick run.
bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
