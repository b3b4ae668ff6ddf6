# Two entry points: `make demo` (set up, then the demo reproduction) and `make test` (set up, then every test).
# Each (re)creates .venv/ idempotently: the stamp is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# MONAI Label gets its own environment: it forces numpy<2 and needs torchvision.
LABEL_VENV := .venv-label
LABEL_STAMP := $(LABEL_VENV)/.installed
# The CPU build of torch; installing it first keeps pip from pulling a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: setup label-setup demo test lint clean

setup: $(STAMP)

label-setup: $(LABEL_STAMP)

$(LABEL_STAMP): requirements-label.txt pyproject.toml
	test -x $(LABEL_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_VENV)/bin/python -m pip install -q --upgrade pip
	$(LABEL_VENV)/bin/python -m pip install -q -r requirements-label.txt
	$(LABEL_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(LABEL_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/brain-extraction-reproduce --profile demo --data_dir demo_data --output_dir results/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint $(LABEL_STAMP)
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) $(LABEL_VENV) .venv-export .pytest_cache .ruff_cache
