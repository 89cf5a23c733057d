# Two entry points, both self-contained on a fresh machine:
#   make demo  - create .venv, install actorsched, run a coordinator + 4 workers on a real workload
#   make test  - create .venv, install the test tools, lint, type-check and run the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/python -m actorsched.demo

test: install-test
	$(BIN)/ruff check actorsched tests bench
	$(BIN)/mypy actorsched
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/roundtrip.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/dispatch_latency.py

clean:
	rm -rf $(VENV) state build *.egg-info
