# Two commands for a fresh machine: `make demo` and `make test`.
# Both bootstrap .venv and the native build first (idempotent, see scripts/bootstrap.sh).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast test-packaging bench clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# the single-process tests only (no ranks, no launchers): minutes, not the whole suite
test-fast: setup
	$(PY) -m pytest -q -m "not multiproc" $(PYTEST_ARGS) tests

# pip install . of this checkout into a fresh venv, checked from outside it
test-packaging: setup
	IPEX_TRAIN_TEST_PACKAGING=1 $(PY) -m pytest -q $(PYTEST_ARGS) tests/test_packaging.py

bench: setup
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build dist ipex_train/*.so ipex_train/*.so.2 ipex_train/_build.json
