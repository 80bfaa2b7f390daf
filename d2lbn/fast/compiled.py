"""d2lbn's batch norm in C++ (``batch_norm.cc``), compiled into MXNet on first use.

MXNet's extension-library API adds operators without rebuilding MXNet: the
wheel ships its header and source, the system C++ compiler builds a shared
library against them, ``mx.library.load`` registers the operator. The library
is cached under ``$XDG_CACHE_HOME/d2lbn`` (else ``~/.cache/d2lbn``), named by a
hash of the source, the MXNet version, the compiler and its flags, and built
under a lock into a temporary file that is renamed into place, so that several
processes starting at once build it once and never load half a file.

What the API leaves to this side (each was a silent error or a crash):

- it does not pass the training flag: the operator takes a ``mode`` input,
  ``Dropout(p=0.5)`` of a 1 inside a graph (1 only in prediction), a constant
  outside one;
- it does not pass the gradient request: ``grad_req='add'`` would be
  overwritten, so the Block refuses it;
- a failed shape or type inference ends the process: the Block checks its
  input first, and the operator's inference states the shapes and lets MXNet's
  own checks raise.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import mxnet as mx
from mxnet import autograd
from mxnet.gluon import nn

from ..functional import WIDE_DTYPES, check_batch_norm_args
from ..layers import BatchNormBase
from .composed import FastBatchNorm

SOURCE = Path(__file__).with_name("batch_norm.cc")
OP_NAME = "d2lbn_batch_norm"
# Portable: no -march=native (that library would crash on a CPU without the
# build machine's instructions); the source picks AVX-512/AVX2 at load time.
# -fopenmp-simd only reads the `omp simd` hints (vectorised double sums), no runtime
FLAGS = ("-O3", "-shared", "-fPIC", "-std=c++17", "-fopenmp-simd")


class CompilerError(RuntimeError):
    """The C++ batch norm could not be built or loaded on this machine."""


def compiler() -> str:
    """The C++ compiler's path: ``$CXX`` or ``g++``; ``CompilerError`` if there is none."""
    name = os.environ.get("CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise CompilerError(f"no C++ compiler: {name!r} is not on PATH (install g++, e.g. "
                            "`apt-get install g++`, or set CXX)")
    return path


def mxnet_api() -> tuple[Path, Path]:
    """The installed MXNet's extension header folder and ``lib_api.cc``."""
    root = Path(mx.__file__).parent
    include, source = root / "include", root / "src" / "lib_api.cc"
    if not (include / "mxnet" / "lib_api.h").is_file() or not source.is_file():
        raise CompilerError(f"this MXNet ({root}) ships no extension API "
                            "(include/mxnet/lib_api.h and src/lib_api.cc)")
    return include, source


def cache_dir() -> Path:
    """Where built libraries are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "d2lbn"


def library_path() -> Path:
    """The library's cache path: a hash of everything the build depends on."""
    include, source = mxnet_api()
    cxx = compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), (include / "mxnet" / "lib_api.h").read_bytes(),
                 source.read_bytes(), mx.__version__.encode(), version.encode(),
                 " ".join(FLAGS).encode()):
        digest.update(hashlib.sha256(part).digest())
    return cache_dir() / f"batch_norm-{digest.hexdigest()[:16]}.so"


def build() -> Path:
    """Compile the library unless the cache has it; return its path."""
    path = library_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it now
        if not path.exists():
            _compile(path)
    return path


def _compile(path: Path) -> None:
    include, source = mxnet_api()
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    cmd = [compiler(), *FLAGS, f"-I{include}", f"-I{include / 'mxnet'}", "-o", tmp,
           str(SOURCE), str(source)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise CompilerError(f"building {SOURCE.name} failed:\n{' '.join(cmd)}\n"
                                f"{done.stderr[-2000:]}")
        os.replace(tmp, path)  # atomic: readers see no file or the whole file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_loaded: Path | None = None


def load() -> Path:
    """Build (once per machine) and load (once per process) the operator; return the library."""
    global _loaded
    if _loaded is None:
        try:
            path = build()
        except OSError as e:  # e.g. a cache folder that cannot be written
            raise CompilerError(f"cannot build the C++ batch norm in {cache_dir()}: {e}") from e
        try:
            mx.library.load(str(path), verbose=False)
        except mx.base.MXNetError as e:
            raise CompilerError(f"MXNet {mx.__version__} refused {path}: {e}") from e
        _loaded = path
    return _loaded


def available() -> bool:
    """Whether the C++ batch norm builds and loads here."""
    try:
        load()
    except CompilerError:
        return False
    return True


# The mode input outside a graph: a constant per device, dtype and mode
_MODES: dict = {}


def _mode_constant(ctx, dtype, training: bool):
    key = (ctx, dtype, training)
    if key not in _MODES:
        _MODES[key] = mx.nd.array([0.0 if training else 1.0], ctx=ctx, dtype=dtype)
    return _MODES[key]


def batch_norm_cpp(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    """``d2lbn.batch_norm`` by the C++ operator: ``(Y, moving_mean, moving_var)``.

    The operator updates the statistics in place; this function gives it copies
    and returns them, as the chapter's function returns new ones.
    """
    check_batch_norm_args(X, gamma, beta, moving_mean, moving_var, dtypes=WIDE_DTYPES)
    load()
    moving_mean, moving_var = moving_mean.copy(), moving_var.copy()
    mode = _mode_constant(X.ctx, X.dtype, autograd.is_training())
    args = [a.as_nd_ndarray() for a in (X, gamma, beta, moving_mean, moving_var)]
    Y = getattr(mx.nd, OP_NAME)(*args[:3], mode, *args[3:], eps=eps, momentum=momentum)
    return Y.as_np_ndarray(), moving_mean, moving_var


class CompiledBatchNorm(BatchNormBase, nn.HybridBlock):
    """The C++ batch norm as a Block: ``d2lbn.BatchNorm``'s parameters, state and checks.

    Hybridize it alone or inside a hybridized ``nn.HybridSequential``: the
    operator updates the moving statistics in place, so no graph has to return
    them. float32 and float64 (after ``cast('float64')``); ``grad_req='add'`` is
    refused. Raises ``CompilerError`` when the library cannot be built: then
    ``compiled_batch_norm`` gives ``FastBatchNorm`` instead.
    """

    dtypes = WIDE_DTYPES

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5,
                 momentum: float = 0.9, **kwargs):
        load()
        super().__init__(**kwargs)
        self._setup(num_features, num_dims, eps, momentum, "full")
        self._checked = None  # what forward last checked

    def hybridize(self, active=True, **kwargs):
        # Buffers kept between calls: a tenth off a small call's fixed cost; another
        # batch size still works, re-planned
        kwargs.setdefault("static_alloc", True)
        kwargs.setdefault("static_shape", kwargs["static_alloc"])
        super().hybridize(active, **kwargs)

    def forward(self, X):
        symbol = isinstance(X, mx.sym.Symbol)  # (in a graph MXNet checks the shapes)
        # A call's fixed cost is most of a small layer's time: what the checks
        # depend on is read once per call, and each new combination checked once
        key = None if symbol else (X.shape, X.dtype, autograd.is_training(), self.gamma.dtype,
                                   self.gamma.grad_req, self.beta.grad_req)
        if symbol or key != self._checked:
            for p in (self.gamma, self.beta):
                if p.grad_req == "add":
                    raise ValueError(f"{p.name}: grad_req='add' is not supported (MXNet's "
                                     "extension API does not tell the operator to add): use "
                                     "'write' and sum the gradients yourself")
            if not symbol:
                self._check(X)
                self._checked = key
        return super().forward(X)

    def hybrid_forward(self, F, X, gamma, beta, moving_mean, moving_var):
        if F is mx.sym:
            mode = F.Dropout(F.ones((1,), dtype=self.gamma.dtype), p=0.5)
        else:
            mode = _mode_constant(X.ctx, X.dtype, autograd.is_training())
        # NumPy-interface arrays in, the legacy operator namespace that the library fills
        args = [a.as_nd_ndarray() for a in (X, gamma, beta)] + [mode] + [
            a.as_nd_ndarray() for a in (moving_mean, moving_var)]
        return getattr(F, OP_NAME)(*args, eps=self.eps, momentum=self.momentum).as_np_ndarray()


def compiled_batch_norm(num_features: int, num_dims: int, **kwargs) -> nn.HybridBlock:
    """``CompiledBatchNorm``, or ``FastBatchNorm`` with a warning if the C++ cannot be built."""
    try:
        return CompiledBatchNorm(num_features, num_dims, **kwargs)
    except CompilerError as e:
        warnings.warn(f"{e}\nUsing d2lbn.fast.FastBatchNorm (MXNet's general operations) "
                      "instead.", RuntimeWarning, stacklevel=2)
        return FastBatchNorm(num_features, num_dims, **kwargs)


__all__ = ["CompiledBatchNorm", "CompilerError", "available", "batch_norm_cpp", "build",
           "compiled_batch_norm", "load"]
