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

test: $(STAMP)
	$(MAKE) --no-print-directory test-tf test-jax test-torch

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q -p no:cacheprovider

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -q -p no:cacheprovider -m backend

test-torch: $(STAMP)
	KERAS_BACKEND=torch $(PY) -m pytest -q -p no:cacheprovider -m backend

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/surgery.py

clean:
	rm -rf $(VENV) build *.egg-info
