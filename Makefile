# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PIP = $(VENV)/bin/pip

.PHONY: demo test test-unit lint install install-dev clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

install: $(VENV)/bin/python
	$(PIP) install -e .

install-dev: $(VENV)/bin/python
	$(PIP) install -e ".[dev]"

demo: install
	$(VENV)/bin/stardss demo --out runs/demo

test: install-dev lint
	$(VENV)/bin/pytest -q

test-unit: install-dev lint
	$(VENV)/bin/pytest -q -m "not integration"

lint: install-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs *.egg-info
