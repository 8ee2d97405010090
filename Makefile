# One entry point for people and CI. Every target installs what it needs first (idempotent .venv).
#   make setup        CPU dependency set into .venv (GPU=1 for the CUDA set: fbgemm-gpu, nccl)
#   make demo         the main job on embedded defaults (local Ray, synthetic data)
#   make test         lint + type check + the whole test suite
#   make bench        figures for bench/RESULTS.md
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
GPU ?= 0
DATA_DIR ?= data/demo
CONFIG ?= configs/data.yaml
TRAIN_CONFIG ?= configs/train.yaml
VARIANT := $(if $(filter 1,$(GPU)),gpu,cpu)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(VARIANT)
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: setup setup-dev demo test lint typecheck bench clean-data

$(STAMP): requirements/base.txt requirements/$(VARIANT).txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/$(VARIANT).txt
	# torchrec's metadata asks for the CUDA fbgemm-gpu: install it without deps (its pure-Python
	# requirements are in requirements/base.txt).
	$(PY) -m pip install --quiet --no-deps torchrec==1.8.0
	@rm -f $(VENV)/.installed-cpu $(VENV)/.installed-gpu
	@touch $@

$(DEV_STAMP): $(STAMP) requirements/dev.txt
	$(PY) -m pip install --quiet -r requirements/dev.txt
	@touch $@

setup: $(STAMP)

setup-dev: $(DEV_STAMP)

demo: $(STAMP)
	$(PY) -m pipelines.demo --config $(CONFIG) --train-config $(TRAIN_CONFIG) --data-dir $(DATA_DIR)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(DEV_STAMP)
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) -m bench.data_pipeline --out bench/RESULTS.md
	$(PY) -m bench.train_speed --out bench/RESULTS.md
	$(PY) -m bench.serve_latency --out bench/RESULTS.md

clean-data:
	rm -rf data/
