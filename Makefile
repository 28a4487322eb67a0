# The two quick-start commands: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here, before the package, because a bare `torch` requirement
# would pull a multi-GB CUDA build; pyproject only declares a compatible range.
# Where pip is not set up with a CPU wheel (as this project's CI machine is), ask
# for one: make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0

.PHONY: demo test install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/rvseg demo

test: install-dev
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/rvseg bench --device auto

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
