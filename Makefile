# TopoPrune: `make app` serves the GUI, `make test` runs the default test suite. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.topoprune-installed
PORT ?= 8501

.PHONY: setup app test test-slow test-e2e bench lint clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@$(PY) -c "from engine.zoo import import_torchvision; import_torchvision()" \
		|| { echo "set-up failed: torch and torchvision do not work together (see the line above)"; exit 1; }
	@touch $(STAMP)

setup: $(STAMP)
	@# The real Fashion-MNIST (--dataset fashion-mnist) comes from Debian; installed only where we run as root.
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist \
		>/dev/null 2>&1)) || echo "setup: dataset-fashion-mnist not installed; --dataset fashion-mnist needs --data-dir"; \
	fi

app: setup
	$(PY) -m streamlit run app.py --server.port $(PORT) --server.address localhost \
		--server.headless true --browser.gatherUsageStats false

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

test-e2e: setup
	$(PY) -m pytest -q tests/e2e

LINT_PATHS := engine gui tests bench app.py

lint: setup
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

clean-venv:
	rm -rf $(VENV)
