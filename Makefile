# d2lbn: `make run` executes every notebook in full mode; `make test` tests everything.
# Both create .venv from $(PYTHON) when it is missing or pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
READY  := $(VENV)/.ready
# nbval runs on copies with execution counts put back (it refuses outputs without
# them; the committed notebooks are stripped), in quick mode
NBVAL_DIR := .nbval
COPY_NBS := $(PY) -c "from d2lbn.notebooks import numbered_copies; numbered_copies('$(NBVAL_DIR)')"
NBVAL_CMD := D2LBN_QUICK=1 $(PY) -m pytest $(NBVAL_DIR) --nbval --nbval-current-env -q

.PHONY: help run test unit nbval lint data bench venv clean-venv

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

run: $(READY) data  ## execute every notebook (full mode), write results/summary.{json,md}
	$(PY) -m d2lbn run

test: $(READY) data lint  ## unit tests, then every notebook under nbval in quick mode
	$(PY) -m pytest tests -q
	$(COPY_NBS)
	$(NBVAL_CMD)

unit: $(READY)  ## unit tests only
	$(PY) -m pytest tests -q

nbval: $(READY) data  ## the notebooks under nbval in quick mode only
	$(COPY_NBS)
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
