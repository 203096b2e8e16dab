# One command each: `make demo` (create the environment, run train → evaluate → export → verify on
# the embedded synthetic data) and `make test` (create the environment, run the test suite).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# mypy finds the folder pipelines/ as the package it installs as (pyproject.toml: [tool.mypy] mypy_path).
MYPY_LINK := build/mypy/tfrec_pipelines

.PHONY: venv demo test benchmark

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[beam,report,serving,tune,test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/tfrec-towers train --output runs/demo-$$(date +%Y%m%d-%H%M%S)

$(MYPY_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../pipelines $@

test: $(STAMP) $(MYPY_LINK)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && $(BIN)/python -m pytest -q -n 2 --durations=15

benchmark: $(STAMP)
	$(BIN)/python benchmarks/movielens_vs_tfrs.py --data-dir ../shared/data/ml-100k
