# The two commands of the README: `make demo` (the main job) and `make test`.
# Both create or reuse .venv and install everything first (scripts/install.sh).
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= out/demo

.PHONY: install demo test lint typecheck pytest clean

install:
	@bash scripts/install.sh

demo: install
	$(PY) -m rprselect demo --out $(OUT)

lint: install
	$(VENV)/bin/ruff check rprselect integrations tests examples scripts
	$(VENV)/bin/ruff format --check rprselect integrations tests examples scripts
	$(PY) scripts/check_imports.py

typecheck: install
	$(VENV)/bin/mypy

pytest: install
	$(PY) -m pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
