# Two entry points: `make run` (the bot; local Bot API emulator when no token) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test lint install check-all lock

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
	$(VENV)/bin/lint-imports

# Fast tests, then the slow/integration ones (services are used when their URLs are set).
test: install lint
	# The hashed lock, exactly; says NOT AUDITED (exit 0) when the advisory service checks nothing.
	$(PY) scripts/dependency_audit.py --requirements requirements.lock --allow-unaudited
	$(VENV)/bin/pytest
	$(VENV)/bin/pytest -m slow

# requirements.lock: every runtime + dev package pinned with its hashes (after changing pyproject.toml).
lock: install
	$(PIP) install -q pip-tools
	$(VENV)/bin/pip-compile -q --generate-hashes --extra dev --strip-extras --no-emit-index-url \
		--no-emit-find-links --output-file requirements.lock pyproject.toml
