# d2lbn: `make run` executes every notebook in full mode; `make test` tests everything.
# Both create .venv from $(PYTHON) when it is missing or pyproject.toml changed; pip refuses a
# Python that pyproject.toml's requires-python excludes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
READY  := $(VENV)/.ready
# One MXNet process uses about one core: processes in parallel, each single-threaded
# nproc obeys OMP_NUM_THREADS, which this Makefile exports as 1 to every process it starts,
# sub-makes included: count the cores without it
JOBS   ?= $(shell env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 2)
export OMP_NUM_THREADS = 1
# nbval on the committed notebooks in quick mode, JOBS notebooks at once, a whole notebook on
# one xdist worker (its cells share a kernel); nbval-sanitize.cfg drops the quick-mode notice,
# so that cells printing it are compared too. No notebook waits for another.
NBVAL_ARGS := --nbval --nbval-current-env --nbval-sanitize-with nbval-sanitize.cfg -q \
	-n $(JOBS) --dist loadfile
# Unit tests on JOBS xdist workers; a group (the dist_sync runs) stays on one worker, in order
UNIT_ARGS := -q -n $(JOBS) --dist loadgroup
NBVAL_CMD := D2LBN_QUICK=1 D2LBN_JOBS=1 $(PY) -m pytest notebooks $(NBVAL_ARGS)

# More Pythons, which CI (.ci/run) tests after `make test`: each one installed gets a cached CPU
# venv, .venv-3.X, and runs the unit tests and notebooks 01-03 in quick mode; one not installed
# is skipped.
PYTHONS ?= 3.12 3.13
QUICK_NBS = $(wildcard notebooks/0[123]_*.ipynb)
SKIP_MESSAGE = test-python-$*: skipped, no python$* runs here (on PATH or among pyenv's versions)
# python3.X that runs: on PATH, else among pyenv's versions (its shims run only selected ones)
find-python = $(firstword $(foreach p,python$(1) \
	$(wildcard $(shell pyenv root 2>/dev/null)/versions/$(1).*/bin/python$(1)),\
	$(shell $(p) -c 'import sys; print(sys.executable)' 2>/dev/null)))
# d2l pins numpy==1.23.5, which has no wheel for Python 3.12+ (d2l-en#2608), and mxnet numpy<2,
# none for 3.13: there they go in without their dependencies, which pyproject.toml lists
NO_DEPS_cpu := "d2l==1.0.3; python_version >= '3.12'" "mxnet==1.9.1; python_version >= '3.13'"
NO_DEPS_gpu := "d2l==1.0.3; python_version >= '3.12'" \
	"mxnet-cu112==1.9.1; python_version >= '3.13'"
# The CPU wheel unless an NVIDIA GPU that mxnet-cu112 supports is present
VARIANT = $(shell $(PYTHON) d2lbn/lab/setup_env.py variant)
# Opt-in GPU install check (not in CI: about 2 GB), in a scratch venv
GPU_CHECK ?= /tmp/d2lbn-gpu-check

.PHONY: help run test ci unit nbval lint data bench venv clean-venv test-pythons check-gpu-install

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

run: $(READY) data  ## execute every notebook (full mode, JOBS at once), write results/
	$(PY) -m d2lbn run --jobs $(JOBS)

test: $(READY) data lint  ## lint, unit tests, every notebook under nbval (quick): this Python
	$(PY) -m pytest tests $(UNIT_ARGS)
	$(NBVAL_CMD)

ci: test test-pythons test-isa-ci  ## what CI runs: test, then PYTHONS, then a second float path

unit: $(READY)  ## unit tests only
	$(PY) -m pytest tests $(UNIT_ARGS)

nbval: $(READY) data  ## the notebooks under nbval in quick mode only
	$(NBVAL_CMD)

lint: $(READY)  ## ruff over the package, tests and notebooks
	$(PY) -m ruff check .

# Found and verified by d2lbn; if missing, the Debian package as root, else Gluon's download
data: $(READY)  ## find Fashion-MNIST, or fetch it (Debian package, else download)
	@$(PY) -m d2lbn data 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y dataset-fashion-mnist \
	    || { apt-get update && apt-get install -y dataset-fashion-mnist; } \
	    || echo "apt-get did not install dataset-fashion-mnist: trying Gluon's download"; \
	  fi; \
	  $(PY) -m d2lbn data --fetch; }

bench: $(READY) data  ## benchmark BN implementations, write results/bench.json
	$(PY) -m d2lbn bench --json results/bench.json

venv: $(READY)  ## create or update .venv

# $(call make-venv,PYTHON,VENV,VARIANT): VENV made by PYTHON (anew if another Python made it),
# d2lbn editable with the variant's and the test extras, and the hook's .pth, which readies
# numpy and pip's CUDA libraries whenever mxnet is imported there
define make-venv
	@[ "$$($(2)/bin/python -V 2>&1)" = "$$($(1) -V 2>&1)" ] || $(1) -m venv --clear $(2)
	@echo '*' > $(2)/.gitignore
	$(2)/bin/python -m pip install -q --upgrade pip
	$(2)/bin/python -m pip install -q -e ".[$(3),test]"
	$(2)/bin/python -m pip install -q --no-deps $(NO_DEPS_$(3))
	$(2)/bin/python -m d2lbn_mxnet_hook
	@touch $(2)/.ready
endef

$(READY): pyproject.toml d2lbn/lab/setup_env.py
	$(call make-venv,$(PYTHON),$(VENV),$(VARIANT))

test-pythons: $(addprefix test-python-,$(PYTHONS))  ## unit tests, notebooks 01-03 (quick) under PYTHONS

test-python-%: PYTHON_X = $(call find-python,$*)
test-python-%: data
	@$(if $(PYTHON_X),$(MAKE) --no-print-directory .venv-$*/.ready,echo "$(SKIP_MESSAGE)")
	$(if $(PYTHON_X),.venv-$*/bin/python -m pytest tests $(UNIT_ARGS))
	$(if $(PYTHON_X),D2LBN_QUICK=1 D2LBN_JOBS=1 .venv-$*/bin/python -m pytest $(QUICK_NBS) \
		$(NBVAL_ARGS))

.venv-%/.ready: pyproject.toml d2lbn/lab/setup_env.py
	$(call make-venv,$(call find-python,$*),.venv-$*,cpu)

# The gpu variant, imported against a stub driver: libcuda.so.1 exporting the driver functions
# libmxnet.so links, which fail. Every other library must come from pip's nvidia wheels.
check-gpu-install:  ## install the gpu variant in GPU_CHECK, import mxnet against a stub libcuda
	$(call make-venv,$(PYTHON),$(GPU_CHECK),gpu)
	mkdir -p $(GPU_CHECK)/stub
	nm -D --undefined-only $(GPU_CHECK)/lib/python3*/site-packages/mxnet/libmxnet.so \
		| awk '$$2 ~ /^cu[A-Z]/ { print "int " $$2 "(void) { return 100; }" }' \
		| gcc -shared -fPIC -x c -o $(GPU_CHECK)/stub/libcuda.so.1 -
	LD_LIBRARY_PATH=$(GPU_CHECK)/stub $(GPU_CHECK)/bin/python -c "$$GPU_CHECK_PY"

# What the stub check prints: each CUDA library mapped into the process, then MXNet's features
define GPU_CHECK_PY
import mxnet, d2lbn_mxnet_hook as hook
libs = (*hook.CUDA_LIBS, 'libcuda.so.1', 'libmxnet.so')
maps = {line.split()[-1] for line in open('/proc/self/maps') if line.rstrip().endswith(libs)}
print(*sorted(maps, key=lambda path: path.rsplit('/', 1)[1]), sep='\n')
print('mxnet', mxnet.__version__, mxnet.runtime.Features())
endef
export GPU_CHECK_PY

clean-venv:  ## remove .venv
	rm -rf $(VENV)

# --- the unit tests on every float path (issue 20) ---
# oneDNN picks its kernels, and with them the order of its float32 sums, by the CPU's best
# instruction set: each test's tolerance must hold on all of them. ISA_RUNS: SSE4.1, AVX2, the
# machine's best (whatever DNNL_MAX_CPU_ISA was) and MXNet without oneDNN.
ISA_RUNS := sse41 avx2 best no-onednn
ISA_ENV_sse41 := DNNL_MAX_CPU_ISA=SSE41 MXNET_MKLDNN_ENABLED=1
ISA_ENV_avx2 := DNNL_MAX_CPU_ISA=AVX2 MXNET_MKLDNN_ENABLED=1
ISA_ENV_best := -u DNNL_MAX_CPU_ISA MXNET_MKLDNN_ENABLED=1
ISA_ENV_no-onednn := -u DNNL_MAX_CPU_ISA MXNET_MKLDNN_ENABLED=0
# The files whose tests compare float32 results of MXNet's kernels (oneDNN's where it has
# them) with a float64 reference, another kernel or another summation order: every file
# with such a tolerance, and of test_dist.py the one comparison of two such runs (its other
# runs take minutes and compare exactly). Left out: C++ kernels built for this machine
# (test_compiled.py), exact and non-numeric tests. About 1 min of CPU on 2 cores.
ISA_CI_TESTS := tests/test_functional.py tests/test_layers.py tests/test_fast.py \
	tests/test_lite.py tests/test_sync.py tests/test_renorm.py tests/test_norms.py \
	tests/test_whiten.py tests/test_compact.py tests/test_project.py tests/test_sparse.py \
	tests/test_invariance.py tests/test_fold.py tests/test_landscape.py tests/test_bnstats.py \
	tests/test_activations.py tests/test_train.py \
	tests/test_dist.py::test_two_workers_step_for_step_like_one_process
# CI's second float path: MXNet without oneDNN, which differs from the default kernels on
# every CPU (SSE4.1 would be the default on a CPU without AVX)
ISA_CI_RUN ?= no-onednn

.PHONY: test-isa test-isa-ci
test-isa: $(READY)  ## every unit test under each of ISA_RUNS, then the float paths that failed
	@failed=; $(foreach run,$(ISA_RUNS),echo "test-isa: $(run): env $(ISA_ENV_$(run))"; \
		env $(ISA_ENV_$(run)) $(PY) -m pytest tests $(UNIT_ARGS) || failed="$$failed $(run)";) \
	if [ -n "$$failed" ]; then echo "test-isa: failed under:$$failed"; exit 1; fi; \
	echo "test-isa: passed under each of $(ISA_RUNS)"

test-isa-ci: $(READY)  ## ISA_CI_TESTS once more under ISA_CI_RUN (CI's second float path)
	env $(ISA_ENV_$(ISA_CI_RUN)) $(PY) -m pytest $(ISA_CI_TESTS) $(UNIT_ARGS)
