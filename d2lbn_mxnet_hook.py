"""Readies numpy and pip's CUDA 11 libraries for mxnet 1.9.1 when mxnet is first imported.

``python -m d2lbn_mxnet_hook`` installs it as a .pth file, which Python runs at start-up:
notebooks import mxnet before d2lbn, so d2lbn would come too late. Standard library only.
"""

# The rest is imported where used: every Python that starts in the environment imports this.
import builtins
import math
import sys

NAME = "d2lbn_mxnet_hook"
# Aliases of the builtins that numpy 1.24 removed and mxnet 1.9.1 still reads (Python 3.12).
ALIASES = ("bool", "int", "float", "complex", "object", "str")
# What numpy 2.0 removed and mxnet 1.9.1 binds at import (Python 3.13): constants, functions
# by their new names, and what NEP 32 moved to numpy-financial (numpy 1.x raised when called).
CONSTANTS = {"PZERO": 0.0, "NZERO": -0.0, "PINF": math.inf, "NINF": -math.inf,
             "Inf": math.inf, "NaN": math.nan, "NAN": math.nan}
RENAMED = {"alltrue": "all", "sometrue": "any", "product": "prod", "round_": "round"}
FINANCIAL = ("mirr", "npv", "pmt", "ppmt", "pv", "rate")
# What mxnet-cu112's libmxnet.so links from the nvidia-*-cu11 wheels, each after its needs.
CUDA_LIBS = ("libcudart.so.11.0", "libcublasLt.so.11", "libcublas.so.11", "libcufft.so.10",
             "libcurand.so.10", "libcusolver.so.11", "libnvrtc.so.11.2", "libnvToolsExt.so.1",
             "libcudnn.so.8", "libnccl.so.2")


def _removed(name, *args, **kwargs):
    """What the functions numpy 1.20 moved to numpy-financial do when called."""
    raise RuntimeError(f"numpy.{name} was removed from numpy (NEP 32): use numpy_financial")


def restore_numpy_names(numpy):
    """Give numpy the names mxnet 1.9.1 reads that this numpy lacks; return those names."""
    import functools
    import warnings

    names = {n: getattr(builtins, n) for n in ALIASES}
    names.update(CONSTANTS)
    names.update({old: getattr(numpy, new) for old, new in RENAMED.items()})
    names["msort"] = lambda a: numpy.sort(a, axis=0)  # numpy 1.x's definition
    names.update({n: functools.partial(_removed, n) for n in FINANCIAL})
    with warnings.catch_warnings():  # numpy 1.23 still has the aliases, deprecated
        warnings.simplefilter("ignore")
        missing = [n for n in names if not hasattr(numpy, n)]
    for name in missing:
        setattr(numpy, name, names[name])
    return missing


def keep_numpy1_reprs(numpy):
    """Print numpy 2's scalars as numpy 1 did; return whether that changed anything.

    mxnet writes operator parameters with str(): numpy 2 would make an index list of
    "[0, np.int64(16)]", which mxnet's parser rejects.
    """
    if int(numpy.__version__.split(".")[0]) < 2:
        return False
    numpy.set_printoptions(legacy="1.25")
    return True


def load_cuda_libraries(folders=None):
    """Load the nvidia-*-cu11 wheels' libraries found on sys.path; return their paths.

    By real path, as each finds its own helpers through $ORIGIN (cuDNN its sub-libraries,
    NVRTC its builtins); RTLD_GLOBAL, so that libmxnet.so's links resolve to them.
    """
    import ctypes
    from pathlib import Path

    found = {}
    for folder in sys.path if folders is None else folders:
        for lib in sorted(Path(folder or ".", "nvidia").glob("*/lib/lib*.so*")):
            found.setdefault(lib.name, lib)
    libs = [found[name] for name in CUDA_LIBS if name in found]
    for lib in libs:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    return libs


class BeforeMXNet:
    """A finder that finds nothing: it readies numpy and CUDA when mxnet is first looked up."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "mxnet":
            sys.meta_path.remove(cls)
            import numpy

            restore_numpy_names(numpy)
            keep_numpy1_reprs(numpy)
            load_cuda_libraries()
        return None


def install():
    """Put the finder first on sys.meta_path, unless mxnet is imported already."""
    if "mxnet" not in sys.modules and BeforeMXNet not in sys.meta_path:
        sys.meta_path.insert(0, BeforeMXNet)


def write_pth(site_packages=None):
    """Write the .pth that runs install() at start-up into site-packages; return its path."""
    import sysconfig
    from pathlib import Path

    path = Path(site_packages or sysconfig.get_path("purelib"), f"{NAME}.pth")
    path.write_text(f"import {NAME}; {NAME}.install()\n")
    return path


if __name__ == "__main__":
    print(f"{NAME}: wrote {write_pth()}")
