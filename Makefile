# README command 1: `make demo`; README command 2: `make test`. Both set up .venv from the project's own files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast demo lint bench clean browser dist gpu-check

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e ".[dev,export,serve]"
	touch $(STAMP)

# README command 1: MOM-30 is generated on first use (cached in ~/.cache/sadcl), then baseline -> prototypes -> SADCL.
DEMO_DIR ?= runs/mom30_demo
demo: venv
	rm -rf $(DEMO_DIR)
	HF_HUB_OFFLINE=1 $(PY) -m sadcl train --config configs/mom30_demo.yaml --output-dir $(DEMO_DIR)

test: venv browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

# Without the end-to-end tests (@pytest.mark.slow: training runs, torchrun, the CLI, the browser); `make test` runs all.
test-fast: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" tests

# Issue #31: tests/test_cuda.py, then a short COCO-shaped run of configs/coco_r101_448.yaml on synthetic data in a
# temporary directory (images/s, peak GPU memory, time per COCO epoch). Without a GPU: one line, exit 0.
gpu-check: venv
	@HF_HUB_OFFLINE=1 $(PY) benchmarks/gpu_check.py

# Headless Chromium for the end-to-end page test (tests/test_serve.py), from Debian rather than `playwright install`.
browser:
	test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# sdist + wheel into dist/ (no build isolation: the venv already has setuptools, and this works offline).
dist: venv
	rm -rf dist build
	$(PY) -m build --no-isolation --outdir dist .

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
