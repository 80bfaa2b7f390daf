"""The float path a run takes: CPU, oneDNN's instruction set, OpenBLAS's kernels, versions.

float32 training diverges chaotically once any rounding differs, and oneDNN picks
its kernels by instruction set (``DNNL_MAX_CPU_ISA`` caps it; ``MXNET_MKLDNN_ENABLED=0``
turns oneDNN off), as OpenBLAS does by CPU (``OPENBLAS_CORETYPE``). ``float_path()``
records them; ``recheck`` re-runs notebooks on another path.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

# What decides the kernels, besides the CPU
ENV = ("DNNL_MAX_CPU_ISA", "MXNET_MKLDNN_ENABLED", "OPENBLAS_CORETYPE")
FILE = "float_path.json"
# A tiny convolution in a fresh process: oneDNN prints its version and the instruction
# set it dispatches to on first use when DNNL_VERBOSE=1 (read once, at start-up)
_PROBE = r"""
import ctypes, json, os
import mxnet as mx
from mxnet import np, npx
npx.set_np()
y = npx.convolution(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), no_bias=True,
                    kernel=(3, 3), num_filter=1)
y.wait_to_read()
blas = {}
try:
    lib = ctypes.CDLL(os.path.join(os.path.dirname(mx.__file__), "libopenblas.so.0"))
    for key, fn in (("config", "openblas_get_config"), ("core", "openblas_get_corename")):
        getattr(lib, fn).restype = ctypes.c_char_p
        blas[key] = getattr(lib, fn)().decode()
except (OSError, AttributeError):
    pass
print("\nd2lbn_probe " + json.dumps({"mxnet": mx.__version__, "openblas": blas,
      "mkldnn_built": mx.runtime.Features().is_enabled("MKLDNN")}), flush=True)
"""
# oneDNN's names for DNNL_MAX_CPU_ISA and the /proc/cpuinfo flag each needs
ISA_FLAGS = {"SSE41": "sse4_1", "AVX": "avx", "AVX2": "avx2", "AVX512_CORE": "avx512f"}


def cpu() -> tuple[str, list[str]]:
    """The CPU's model name and its vector extensions (SSE4.1 to AVX-512, AMX)."""
    model, flags = None, []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        if key.strip() == "flags":
            flags = sorted(f for f in value.split()
                           if f.startswith(("sse4", "avx", "fma", "amx", "f16c")))
            break
    return model or platform.processor() or platform.machine(), flags


def float_path(env: dict[str, str | None] | None = None) -> dict:
    """CPU, oneDNN's version and instruction set, OpenBLAS's kernels, MXNet's version, and
    the variables that chose them, for this environment changed by ``env`` (None: unset).

    oneDNN is asked in a fresh process, since it reads its settings once per process.
    """
    full = dict(os.environ)
    for key, value in (env or {}).items():
        full.pop(key, None) if value is None else full.__setitem__(key, value)
    full.update(DNNL_VERBOSE="1", OMP_NUM_THREADS="1")
    for key in ("MKLDNN_VERBOSE", "ONEDNN_VERBOSE"):
        full.pop(key, None)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=full, capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"the float-path probe failed: {out.stderr.strip()[-2000:]}")
    probe = json.loads(out.stdout.rsplit("d2lbn_probe ", 1)[1])
    onednn = {"version": None, "isa": None}
    for line in out.stdout.splitlines():
        if line.startswith("dnnl_verbose,info,oneDNN v"):
            onednn["version"] = line.split("oneDNN v", 1)[1].split()[0]
        elif line.startswith("dnnl_verbose,info,cpu,isa:"):
            onednn["isa"] = line.split("isa:", 1)[1].strip()
    model, flags = cpu()
    return {"cpu": model, "cpu_flags": flags, "mxnet": probe["mxnet"],
            # isa None: oneDNN ran nothing (turned off, or not built in)
            "onednn": {**onednn, "built": probe["mkldnn_built"]},
            "openblas": probe["openblas"],
            "env": {k: full[k] for k in ENV if k in full}}


def describe(path: dict) -> str:
    """One line: CPU, oneDNN and its instruction set, OpenBLAS's kernels, MXNet, settings."""
    dnn = path["onednn"]
    dnn_text = (f"oneDNN {dnn['version']} on {dnn['isa']}" if dnn.get("isa")
                else "oneDNN off")
    blas = path.get("openblas", {}).get("core")
    env = ", ".join(f"{k}={v}" for k, v in path.get("env", {}).items())
    return (f"{path['cpu']}; {dnn_text}" + (f"; OpenBLAS {blas} kernels" if blas else "")
            + f"; MXNet {path['mxnet']}" + (f" ({env})" if env else ""))


def write(folder: Path, path: dict | None = None, notebooks: list[str] = ()) -> Path:
    """Save ``path`` (by default this process's float path) in ``folder/float_path.json`` as
    the last run's, and as the path of each of ``notebooks``, whose outputs it produced."""
    from .records import write_atomic

    path = path or float_path()
    saved = _load(Path(folder))
    saved["last"] = path
    saved["notebooks"].update({stem: path for stem in notebooks})
    target = Path(folder) / FILE
    write_atomic(target, json.dumps(saved, indent=1, sort_keys=True) + "\n")
    return target


def read(folder: Path, notebook: str | None = None) -> dict | None:
    """The float path of ``notebook``'s committed outputs, or of the last run; None if unknown."""
    saved = _load(Path(folder))
    return saved["notebooks"].get(notebook) if notebook else saved.get("last")


def _load(folder: Path) -> dict:
    target = folder / FILE
    saved = json.loads(target.read_text()) if target.exists() else {}
    if "cpu" in saved:  # one path, as first written: the last run's
        saved = {"last": saved}
    return {"notebooks": {}, **saved}


def supported_isas(flags: list[str]) -> list[str]:
    """The ``DNNL_MAX_CPU_ISA`` values this CPU can run, narrowest first."""
    return [isa for isa, flag in ISA_FLAGS.items() if flag in flags]


def other_than(committed: dict | None, flags: list[str]) -> dict[str, str | None]:
    """Settings that put oneDNN on an instruction set other than ``committed``'s.

    AVX-512 against AVX2 (and back) where the CPU has both; else the narrowest, SSE4.1;
    oneDNN on at its widest if the committed run had it off.
    """
    isas = supported_isas(flags)
    if committed is None:
        return {"DNNL_MAX_CPU_ISA": "SSE41", "MXNET_MKLDNN_ENABLED": None}
    isa = (committed.get("onednn") or {}).get("isa") or ""
    if not isa:
        return {"DNNL_MAX_CPU_ISA": None, "MXNET_MKLDNN_ENABLED": None}
    if "AVX2" in isa and "AVX512_CORE" in isas:
        return {"DNNL_MAX_CPU_ISA": "AVX512_CORE", "MXNET_MKLDNN_ENABLED": None}
    if "AVX-512" in isa and "AVX2" in isas:
        return {"DNNL_MAX_CPU_ISA": "AVX2", "MXNET_MKLDNN_ENABLED": None}
    if "SSE4.1" not in isa:
        return {"DNNL_MAX_CPU_ISA": "SSE41", "MXNET_MKLDNN_ENABLED": None}
    return {"DNNL_MAX_CPU_ISA": None, "MXNET_MKLDNN_ENABLED": "0"}
