# Conda activation hook for the d2lbn-gpu environment (environment.yml).
#
# Install it once, with the environment active:
#   install -D -m 644 env/activate-gpu.sh "$CONDA_PREFIX/etc/conda/activate.d/d2lbn-gpu.sh"
# From then on `conda activate d2lbn-gpu` sources it: conda sources every
# $CONDA_PREFIX/etc/conda/activate.d/*.sh in the activating shell.
#
# Why: the wheel's libmxnet.so searches for its CUDA libraries (cudart, cuBLAS, cuDNN,
# NCCL, ...) in its own folder (RPATH $ORIGIN, i.e. site-packages/mxnet) and in the loader's
# default paths, while conda installs them in $CONDA_PREFIX/lib. Putting that folder first
# on LD_LIBRARY_PATH lets `import mxnet` find them, in notebooks' kernels and subprocesses too.
#
# Sourced, not run: plain POSIX sh (bash, zsh, dash), no `exit`, no `set -e`. Idempotent: a
# second activation does not add the folder again, and an empty LD_LIBRARY_PATH gets no
# trailing ':' (which the loader would read as the current directory). The entry stays after
# `conda deactivate` until the shell exits.

if [ -n "${CONDA_PREFIX:-}" ] && [ -d "$CONDA_PREFIX/lib" ]; then
    case ":${LD_LIBRARY_PATH:-}:" in
        *":$CONDA_PREFIX/lib:"*) ;;
        *)
            LD_LIBRARY_PATH="$CONDA_PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            export LD_LIBRARY_PATH
            ;;
    esac
fi
