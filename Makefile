# Developer entry points. `make` alone lists them.
#
# Variables:
#   PYTHON       the Python 3.11 to build .venv with (default: python3.11, else python3 if 3.11)
#   ARGS         arguments for `python -m alchemy` in `make run` (default: run)
#   PYTEST_ARGS  arguments for pytest in `make test`, e.g. PYTEST_ARGS="-x tests/queue"
#   BENCH_ARGS   arguments for `python -m bench` in `make bench`
#   TRIAL_ARGS   arguments for systemd/try-in-container.sh in `make systemd-trial` (--fresh)

PYTHON ?=
ARGS ?= run
PYTEST_ARGS ?=
BENCH_ARGS ?=
TRIAL_ARGS ?=

VENV := .venv
VENV_PY := $(VENV)/bin/python
IS_PY311 := -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'

.DEFAULT_GOAL := help
.PHONY: help venv services tools run test lint bench systemd-trial first-run-trial clean

help:
	@echo "make run      set up .venv, make sure Redis + Postgres answer, migrate, run python -m alchemy \$$ARGS"
	@echo "make test     same setup, then the whole test suite (pass PYTEST_ARGS=...)"
	@echo "make lint     ruff check, ruff format --check, mypy"
	@echo "make bench    same setup, then python -m bench (pass BENCH_ARGS=...)"
	@echo "make services make sure Redis and Postgres answer at the configured URLs"
	@echo "make tools    make sure systemd-analyze, chromium and chromedriver are there (apt-get as root)"
	@echo "make systemd-trial  boot systemd in a container (root) and run docs/operations.md's systemctl steps"
	@echo "make first-run-trial  make run + make test in a clean Debian 12 container without Redis/PostgreSQL (root)"
	@echo "make venv     create .venv with Python 3.11 and install the package with [dev] extras"
	@echo "make clean    remove .venv and tool caches (keeps .local/ and running services)"

venv: $(VENV)/.installed

# Reinstalls only when pyproject.toml is newer than the stamp.
$(VENV)/.installed: pyproject.toml
	@if [ ! -x $(VENV_PY) ]; then \
		py=; \
		for candidate in $(or $(PYTHON),python3.11 python3); do \
			if $$candidate $(IS_PY311) >/dev/null 2>&1; then py=$$candidate; break; fi; \
		done; \
		if [ -z "$$py" ]; then \
			echo "make: Python 3.11 is required: install python3.11 or pass PYTHON=/path/to/python3.11" >&2; \
			exit 1; \
		fi; \
		echo "$$py -m venv $(VENV)"; \
		$$py -m venv $(VENV) || exit 1; \
	elif ! $(VENV_PY) $(IS_PY311); then \
		echo "make: $(VENV) is not Python 3.11: run 'make clean' and try again" >&2; \
		exit 1; \
	fi
	$(VENV_PY) -m pip install -e '.[dev]'
	@touch $@

services: venv
	$(VENV_PY) scripts/ensure_services.py

# Applies pending database migrations first (docs/schema.md), then runs the command.
run: venv services
	$(VENV_PY) -m alchemy migrate
	$(VENV_PY) -m alchemy $(ARGS)

test: venv services tools
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

# Programs the tests call besides Python, from Debian's packages, installed here when missing
# (as root with apt-get; otherwise it says what to install); installing them starts nothing:
#   systemd-analyze (systemd)      tests/ops verifies the unit files in systemd/ with it
#   chromium, chromedriver         tests/browser drive the dashboard in a headless Chromium
#   (chromium, chromium-driver)    through selenium; no browser is ever downloaded
TOOLS := systemd-analyze:systemd chromium:chromium chromedriver:chromium-driver

tools:
	@missing=; \
	for pair in $(TOOLS); do \
		command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "apt-get install$$missing"; \
			apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				$$missing >/dev/null || exit 1; \
		fi; \
		for pair in $(TOOLS); do \
			command -v "$${pair%%:*}" >/dev/null 2>&1 || { \
				echo "make: $${pair%%:*} is missing: install Debian's $${pair#*:} package" \
					"(as root: apt-get install $${pair#*:})" >&2; \
				exit 1; }; \
		done; \
	fi

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

bench: venv services
	$(VENV_PY) -m bench $(BENCH_ARGS)

# The units under a real systemd: a Debian 12 container booted with systemd-nspawn runs the
# systemctl/journalctl steps of docs/operations.md (see the script's header). Root only.
systemd-trial: venv services
	systemd/try-in-container.sh $(TRIAL_ARGS)

# The README's two commands on a clean Debian 12 rootfs (Python 3.11 and make, no Redis, no
# PostgreSQL) under systemd-nspawn with its own network: make run installs and starts both,
# then make test (PYTEST_ARGS for part of the suite). Root only; see the script's header.
first-run-trial: venv
	PYTEST_ARGS="$(PYTEST_ARGS)" scripts/try-first-run.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
