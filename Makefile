# polyheads: the two commands of the README.
#   make demo   install into .venv, fetch the bundled data (Debian package), compare every head on it
#   make test   install into .venv, fetch the bundled data, run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pinned: these lie on disk on the project's machines; a plain `pip install torch` pulls GBs from the registry
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
STAMP := $(BIN)/.polyheads-installed
# tests run in 2 processes (pytest-xdist), one thread each: the machines have 2 cores
TEST_WORKERS ?= 2
# the demo's 3-epoch budget is too short for the seed's temperature LR (0.001) to let beta grow
DEMO_ARGS ?= temperature_lr=0.05

.PHONY: install data test demo bench clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	@echo "installing the bundled Fashion-MNIST (Debian package dataset-fashion-mnist)"
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

test: install data
	OMP_NUM_THREADS=1 MPLBACKEND=Agg $(BIN)/python -m pytest -n $(TEST_WORKERS) tests

demo: install data
	OMP_NUM_THREADS=1 $(BIN)/python tools/compare.py --jobs 2 $(DEMO_ARGS)

bench: install data
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
