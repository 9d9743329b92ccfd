# Quick start: `make demo` and `make test`; each creates .venv and installs npvi first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint docs docs-examples notebooks bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

demo: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[demo]"
	$(BIN)/npvi demo

# `make test` runs ruff, then pytest: the unit tests, the doctests, the README's examples, the Sphinx
# docs build and every notebook with small settings.
# pytest-xdist spreads the tests over every core (-n auto), keeping each xdist_group on one worker (the
# Sphinx build of tests/test_docs.py is made once); a single file runs fine without it.
test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/ruff check npvi tests bench docs notebooks examples
	$(BIN)/python -m pytest -n auto --dist loadgroup

# HTML docs in docs/_build/html; warnings are errors.
docs: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

# Run every docs page's Python examples (about ten minutes: they train networks).
docs-examples: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python docs/run_examples.py

# Re-execute every notebook in full and store the outputs in place.
notebooks: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[notebooks]"
	$(BIN)/python notebooks/run.py --full

# The benchmark suite (the dense MLP, the CNN of bench/conv.py, converted Flax/Equinox CNNs, a converted Flax
# transformer block and embedding memory, the README's script cold and warm in the compilation cache); the
# TensorFlow columns appear when the `bench` extra installs.
bench: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	-$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/run.py
	$(BIN)/python bench/conv.py
	$(BIN)/python bench/networks.py
	$(BIN)/python bench/transformer.py
	$(BIN)/python bench/compile_cache.py

clean:
	rm -rf $(VENV) npvi-demo .pytest_cache docs/_build
