# Two entry points for a newcomer: `make demo` and `make test`. Each creates .venv and installs the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned together: open_clip imports torchvision, which only loads beside
# the torch build it was made for; the pins keep pip from resolving other (multi-GB) builds.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
CATALOG ?= catalogs/demo.yaml
PYTEST_ARGS ?=

# The browser tests need headless Chromium; the script installs it (Debian) where missing, else they skip.
.PHONY: venv demo test test-browser ingest train evaluate benchmark clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS) -e ".[test]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python -m pipeline.run $(CATALOG)

test-browser:
	-@sh tests/install_browser.sh

# lint and types first (seconds), then the suite: CI fails on any of the three
test: venv test-browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

ingest: venv
	$(BIN)/python -m pipeline.ingest $(CATALOG)

train: venv
	$(BIN)/python -m pipeline.train $(CATALOG)

evaluate: venv
	$(BIN)/python -m pipeline.evaluate $(CATALOG) --methods baseline,mamol --protocol mamol-table1

benchmark: venv
	$(BIN)/python -m benchmarks.run --output benchmarks/results

clean:
	rm -rf $(VENV) outputs .pytest_cache
