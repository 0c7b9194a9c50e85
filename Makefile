# The two set-up commands of the README: `make demo` and `make test`.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench readme clean

$(PYTHON):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test,demo,onnx]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PYTHON) -m pytest

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PYTHON) demo/digits.py

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Regenerate the README's hyperparameter table from the schema (tests/test_readme.py checks it).
readme: $(STAMP)
	$(PYTHON) tests/test_readme.py

bench: $(STAMP)
	$(PYTHON) bench/train_speed.py

clean:
	rm -rf $(VENV) build demo/work
