# The two set-up commands (README.md): `make demo` and `make test`. Both create .venv/ first.
# `make test-fast` is the edit loop's tier: the tests that train nothing and start no process.
PY := .venv/bin/python

.PHONY: env test-tools demo test test-fast
env:
	bash install/setup_env.sh

test-tools:
	bash install/setup_test_tools.sh

demo: env
	$(PY) tools/run_synthetic_demo.py

test: env test-tools
	$(PY) -m pytest -q --durations=20 tests

test-fast: env
	$(PY) -m pytest -q -m "not slow" --durations=10 tests
