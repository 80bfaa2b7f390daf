# d2lbn: `make run` executes every notebook in full mode; `make test` tests everything.
# Both create .venv from $(PYTHON) when it is missing or pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
READY  := $(VENV)/.ready
# One MXNet process uses about one core: processes in parallel, each single-threaded
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
export OMP_NUM_THREADS = 1
# nbval on the committed notebooks, in quick mode, a notebook's cells on one worker
# (conftest.py groups a notebook with the one whose records it loads)
NBVAL_CMD := D2LBN_QUICK=1 D2LBN_JOBS=1 $(PY) -m pytest notebooks --nbval --nbval-current-env \
	-n $(JOBS) --dist loadgroup -q

.PHONY: help run test unit nbval lint data bench venv clean-venv

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

run: $(READY) data  ## execute every notebook (full mode, JOBS at once), write results/
	$(PY) -m d2lbn run --jobs $(JOBS)

test: $(READY) data lint  ## unit tests, then every notebook under nbval in quick mode
	$(PY) -m pytest tests -q -n $(JOBS)
	$(NBVAL_CMD)

unit: $(READY)  ## unit tests only
	$(PY) -m pytest tests -q -n $(JOBS)

nbval: $(READY) data  ## the notebooks under nbval in quick mode only
	$(NBVAL_CMD)

lint: $(READY)  ## ruff over the package, tests and notebooks
	$(PY) -m ruff check .

data: $(READY)  ## find Fashion-MNIST, or fetch it (Debian package, else download)
	$(PY) -m d2lbn data --fetch

bench: $(READY) data  ## benchmark BN implementations, write results/bench.json
	$(PY) -m d2lbn bench --json results/bench.json

venv: $(READY)  ## create or update .venv

# The CPU wheel unless an NVIDIA GPU that mxnet-cu112 supports is present
$(READY): pyproject.toml d2lbn/setup_env.py
	@$(PYTHON) d2lbn/setup_env.py check-python
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PYTHON) d2lbn/setup_env.py requirements \
		$$($(PYTHON) d2lbn/setup_env.py variant) > $(VENV)/requirements.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(VENV)/requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

clean-venv:  ## remove .venv
	rm -rf $(VENV)
