# Two commands do everything: `make reproduce` (the main job) and `make test`.
# Each target is idempotent: a second run only does what is missing.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; bring your own build (e.g. CUDA) by installing it into $(VENV) first,
# or with `make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124" test`.
TORCH_SPEC ?= torch==2.13.0
MODEL ?= smollm2-135m-instruct
# PRESET=transfer runs the experiment on qwen2.5-coder-0.5b-instruct (fetched by the run itself).
PRESET ?= quick
RUN ?= runs/$(PRESET)
STAMP := $(VENV)/.mlcwb-installed

.PHONY: setup model reproduce test lab browser-deps clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

model: $(STAMP)
	$(VENV)/bin/mlcwb fetch-model $(MODEL)

reproduce: setup
	$(VENV)/bin/mlcwb reproduce --preset $(PRESET) --out $(RUN)

browser-deps: $(STAMP)
	sh tools/install_browser.sh $(PY)

test: model browser-deps
	$(PY) -m pytest

lab: model
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache
