# The two set-up commands (README.md): `make demo` and `make test`. Both create .venv/ first.
PY := .venv/bin/python

.PHONY: env demo test
env:
	bash install/setup_env.sh

demo: env
	$(PY) tools/run_synthetic_demo.py

test: env
	$(PY) -m pytest -q tests
