# pgvault: `make run` serves a demo on this machine, `make test` runs every check CI runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint layers typecheck unit openapi bench clean lock

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m app.dev

test: $(STAMP) lint layers typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check app tests bench alembic

layers: $(STAMP)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

# The container image's pinned dependencies (with hashes), from pyproject.toml. Needs uv.
UV ?= uv
lock:
	$(UV) pip compile pyproject.toml --python-version 3.11 --python-platform linux \
		--generate-hashes --annotation-style line --custom-compile-command "make lock" \
		-o requirements.lock

openapi: $(STAMP)
	$(BIN)/python -m app.openapi > openapi/openapi.json

bench: $(STAMP)
	$(BIN)/python bench/backup.py --rows 3000000
	$(BIN)/python bench/restore.py --rows 3000000

clean:
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache
