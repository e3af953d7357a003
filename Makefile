# Two entry points: `make run` (the bot; local Bot API emulator when no token) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test lint install check-all

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/digitbot run

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

# Fast tests, then the slow/integration ones (services are used when their URLs are set).
test: install lint
	$(PY) scripts/dependency_audit.py
	$(VENV)/bin/pytest
	$(VENV)/bin/pytest -m slow
