# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# zennit 1.0 needs Python >= 3.11.11: a second environment on pyenv's Python 3.12.
Z1PY ?= $(lastword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python))
Z1VENV ?= .venv-zennit1
Z1STAMP := $(Z1VENV)/.installed

.PHONY: demo test bench data test-zennit1 lint typecheck docs dist clean mutation

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,data,docs]'
	touch $@

data: $(STAMP)
	$(BIN)/python -m benchmarks.data.fetch

demo: $(STAMP) data
	$(BIN)/python -m benchmarks all --quick

# pytest exits 5 when it collects nothing: say so instead of a bare make error.
define run_pytest
	$(1) -m pytest $(2) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests in '$(2)'" >&2; fi; exit $$rc
endef

test: $(STAMP) data
	$(call run_pytest,$(BIN)/python,tests)

bench: $(STAMP) data
	$(BIN)/python -m benchmarks all

# ruff (lint and format) over the repository, then mypy over zennit_ext and captum_ext
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy

# mutation testing of the core modules (tools/mutation.py; not part of `make test`: hours);
# a subset: make mutation MODULES="zennit_ext/plrp/composites.py zennit_ext/nrm/rules.py"
MODULES ?=
MUTATION_ARGS ?=
mutation: $(STAMP) data
	$(BIN)/python tools/mutation.py $(MUTATION_ARGS) $(MODULES)

# mypy at the strictness of [tool.mypy] in pyproject.toml, over the packages listed there
typecheck: $(STAMP)
	$(BIN)/python -m mypy

# HTML in docs/_build/html; warnings fail the build; the notebooks are executed (quick settings)
SPHINX_ARGS ?=
docs: $(STAMP)
	rm -rf docs/_build docs/api
	$(BIN)/python -m sphinx -W --keep-going -b html $(SPHINX_ARGS) docs docs/_build/html

# sdist and wheel of zennit_ext + captum_ext in dist/ (offline: make dist BUILD_ARGS=--no-isolation)
BUILD_ARGS ?=
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build $(BUILD_ARGS) --outdir dist .
	$(BIN)/python -m twine check --strict dist/*

$(Z1VENV)/bin/python:
	@test -n "$(Z1PY)" || { echo "no pyenv Python 3.12 found (set Z1PY)"; exit 1; }
	$(Z1PY) -m venv $(Z1VENV)

$(Z1STAMP): pyproject.toml | $(Z1VENV)/bin/python
	$(Z1VENV)/bin/python -m pip install -q -e '.[dev,data]' 'zennit==1.0.*'
	touch $@

test-zennit1: $(Z1STAMP) data
	$(call run_pytest,$(Z1VENV)/bin/python,tests/zennit_ext)

clean:
	rm -rf $(VENV) $(Z1VENV) .cache reports .pytest_cache .ruff_cache .mypy_cache .hypothesis \
		build dist *.egg-info docs/_build docs/api .mutation mutants

# side environment for the zennit-crp anchor of `python -m benchmarks atlas` (zennit 0.4.6 and
# zennit-crp 0.6.0 from PyPI, the torch/torchvision of the main venv); the suite skips the
# anchor with a message without it
crp-env:
	$(PY) -m venv .venv-crp
	.venv-crp/bin/python -m pip install -q "torch==$$($(BIN)/python -c 'import torch; print(torch.__version__.split("+")[0])')" "torchvision==$$($(BIN)/python -c 'import torchvision; print(torchvision.__version__.split("+")[0])')" zennit==0.4.6 zennit-crp==0.6.0
