# kerasprune: `make demo` and `make test` set everything up on a fresh clone (Python 3.11 + pip).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-tf test-jax test-torch lint bench clean

# pyproject.toml declares compatible ranges; constraints.txt pins the exact, tested versions.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,jax,torch]"
	# The `hub` extra (keras-hub, for the keras_hub tests) without tensorflow-text, which would
	# install a second, full TensorFlow build over tensorflow-cpu; keras_hub's models need only these:
	$(PY) -m pip install --quiet -c constraints.txt --no-deps keras-hub
	$(PY) -m pip install --quiet -c constraints.txt regex tokenizers sentencepiece kagglehub
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kerasprune demo

# Tests run on 2 worker processes (pytest-xdist); tests that train run in one child process
# (tests/isolation.py), grouped on one worker. `make test PYTEST_WORKERS=0` runs them serially.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadgroup

test: $(STAMP)
	$(MAKE) --no-print-directory test-tf test-jax test-torch

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PYTEST)

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PYTEST) -m backend

test-torch: $(STAMP)
	KERAS_BACKEND=torch $(PYTEST) -m backend

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/surgery.py

clean:
	rm -rf $(VENV) build *.egg-info
