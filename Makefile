# Quick start: `make demo` (a local three-node federation) and `make test`.
# Both work on a fresh machine: they create .venv and install genofed into it.
# `make test-hail` runs the shared backend suite in a second environment with Hail (genofed[hail]
# pins rich<13, which flwr cannot share): .venv-hail.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENV_HAIL ?= .venv-hail
HAIL_STAMP := $(VENV_HAIL)/.installed

.PHONY: demo test test-hail lint typecheck bench bench-backends clean install

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,mpc,he,fl]'
	touch $(STAMP)

install: $(STAMP)

$(HAIL_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV_HAIL)
	$(VENV_HAIL)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_HAIL)/bin/python -m pip install --quiet -e '.[dev,mpc,he,hail]'
	touch $(HAIL_STAMP)

demo: $(STAMP)
	$(VENV)/bin/genofed demo --dir demo-federation

test: $(STAMP)
	$(PY) -m pytest -q

test-hail: $(HAIL_STAMP)
	GENOFED_REQUIRE_HAIL=1 $(VENV_HAIL)/bin/python -m pytest -q tests/test_backends.py tests/test_hail_store.py tests/test_hail_exprs.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

bench-backends: $(HAIL_STAMP)
	$(VENV_HAIL)/bin/python benchmarks/bench_backends.py

clean:
	rm -rf $(VENV) $(VENV_HAIL) demo-federation build *.egg-info .pytest_cache .mypy_cache .ruff_cache
