# Two entry points, both self-contained on a fresh machine:
#   make demo  - create .venv, install actorsched, run a coordinator + 4 workers on a real workload
#   make test  - create .venv, install the test tools (and, as root on Debian, chromium for the
#                dashboard's browser test and PostgreSQL for the journal's), lint, type-check and
#                run the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test browser postgresql bench clean

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

# The dashboard's browser test drives Debian's chromium through chromium-driver.  Install them
# when missing, as root with apt-get; anywhere else (no root, no apt, no network) say so and go
# on: that test then skips, naming what is missing.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "make: installing chromium and chromium-driver (apt-get) for the dashboard browser test"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 \
		     && apt-get install -y -q chromium chromium-driver >/dev/null; } \
		|| echo "make: warning: could not install chromium; the dashboard browser test will skip"; \
	else \
		echo "make: chromium/chromedriver not found and not installable here (needs root and apt-get:" \
		     "apt-get install chromium chromium-driver); the dashboard browser test will skip"; \
	fi

# The PostgreSQL journal tests start throwaway servers (tests/pgserver.py) from the binaries of
# Debian's postgresql package in /usr/lib/postgresql/<major>/bin.  Install it when missing, as
# root with apt-get; anywhere else say so and go on: those tests then skip (under CI, with CI
# set, they fail instead, naming what is missing).  The package may start its own cluster
# service; the tests neither use nor need it.
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "make: installing postgresql (apt-get) for the PostgreSQL journal tests"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q postgresql >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 \
		     && apt-get install -y -q postgresql >/dev/null; } \
		|| echo "make: warning: could not install postgresql; the PostgreSQL tests will skip"; \
	else \
		echo "make: PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) not found and not" \
		     "installable here (needs root and apt-get: apt-get install postgresql); the PostgreSQL" \
		     "tests will skip"; \
	fi

test: install-test browser postgresql
	$(BIN)/ruff check actorsched tests bench
	$(BIN)/mypy actorsched
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/roundtrip.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/dispatch_latency.py

clean:
	rm -rf $(VENV) state build *.egg-info
