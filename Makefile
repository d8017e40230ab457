# diffdenoise: every target that needs the virtual environment creates it first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/tiny.yaml
ARGS ?=
CLEAN_DIR ?=
NOISE_DIR ?=
NAME ?=
DEMO_DIR := demo

.PHONY: install test test-fast lint format demo shards train infer eval bench quality clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,eval]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: $(STAMP)
	$(PY) -m diffdenoise.summary configs/*.yaml

clean:
	rm -rf $(DEMO_DIR) runs shards/*/ bench/results.json .pytest_cache
