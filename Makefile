# `make quickstart` and `make test` each build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: quickstart test lint clean wheel-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(BIN)/xbench quickstart

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check xbench tests benchmarks scripts

# A non-editable install ships the recipes and the report's templates: build the wheel, install it in a fresh
# venv, run the CLI, load a packaged recipe and the report templates from outside the source tree.
WHEEL_VENV ?= /tmp/xbench-wheel-venv
wheel-check: | $(BIN)/python
	rm -rf dist $(WHEEL_VENV)
	$(BIN)/python -m pip wheel --no-deps --quiet -w dist .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet dist/xbench-*.whl
	cd / && $(WHEEL_VENV)/bin/xbench quickstart --help > /dev/null
	cd / && $(WHEEL_VENV)/bin/python -c "from xbench.config import load_config; \
	cfg = load_config([], ['dataset.name=cub']); \
	assert (cfg.dataset.image_size, cfg.train.epochs, cfg.model.options['backbone']) == (224, 30, 'resnet50'), cfg; \
	assert load_config(['paper/intr_cub.yaml']).train.epochs == 140; \
	assert load_config(['roar/quickstart.yaml']).train.epochs == 6; print('wheel: recipes load')"
	cd / && $(WHEEL_VENV)/bin/python -c "from xbench.report.html import templates; \
	assert all(templates().get_template(t) for t in ('report.html.j2', 'leaderboard.html.j2', 'comparison.html.j2')); \
	print('wheel: report templates load')"

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis dist build
