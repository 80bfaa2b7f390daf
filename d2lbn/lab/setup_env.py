"""Which MXNet wheel this machine can run: the GPU probe behind `make`'s choice of extra.

Standard library only: it runs under the system python3 before numpy or mxnet exist. pip
does the rest from pyproject.toml (requires-python, the extras, their pins).

    python3 d2lbn/setup_env.py variant    # print cpu or gpu (the reason on stderr)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping

VARIANTS = ("cpu", "gpu")
VARIANT_ENV = "D2LBN_VARIANT"
GPU_WHEEL = "mxnet-cu112 1.9.1"

# Cubins in the wheel's libmxnet.so (read from its .nv_fatbin section); it has no PTX, so
# no GPU of another major version can run it.
WHEEL_ARCHS = ((5, 0), (6, 0), (7, 0), (8, 0), (8, 6))


def parse_compute_cap(cap: str) -> tuple[int, int]:
    """``"8.6"`` as ``(8, 6)``."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", cap)
    if not m:
        raise ValueError(f"not a compute capability: {cap!r}")
    return int(m.group(1)), int(m.group(2))


def supported(compute_cap: str) -> bool:
    """Whether the GPU wheel has kernels for a GPU of this compute capability, e.g. "8.6".

    A cubin built for sm_XY runs on devices X.Z with Z >= Y (same major version only).
    """
    major, minor = parse_compute_cap(compute_cap)
    return any(major == m and minor >= n for m, n in WHEEL_ARCHS)


def query_gpus(nvidia_smi: str) -> list[tuple[str, str]]:
    """(name, compute capability) of each GPU nvidia-smi lists; RuntimeError if it cannot."""
    cmd = [nvidia_smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"{' '.join(cmd)} failed: {e}") from e
    if out.returncode != 0:
        # Drivers before ~510 have no compute_cap field and reject the query.
        detail = (out.stderr or out.stdout).strip().splitlines()[:1]
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {' '.join(detail)}")
    gpus = []
    for line in out.stdout.splitlines():
        if line.strip():
            name, _, cap = line.rpartition(",")
            gpus.append((name.strip(), cap.strip()))
    return gpus


def _describe(name: str, cap: str) -> str:
    """``GPU 'NVIDIA A100' sm_80``, or the raw capability if it does not parse."""
    try:
        major, minor = parse_compute_cap(cap)
    except ValueError:
        return f"GPU {name!r} (compute capability {cap!r})"
    return f"GPU {name!r} sm_{major}{minor}"


def _is_supported(cap: str) -> bool:
    """supported(), with an unreadable capability (e.g. '[N/A]') counted as unsupported."""
    try:
        return supported(cap)
    except ValueError:
        return False


def variant(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """("cpu" or "gpu", the reason): which MXNet wheel this machine can run."""
    environ = os.environ if environ is None else environ
    forced = environ.get(VARIANT_ENV, "").strip().lower()
    if forced:
        if forced not in VARIANTS:
            raise ValueError(f"{VARIANT_ENV} must be cpu or gpu, not {forced!r}")
        return forced, f"{VARIANT_ENV}={forced}"

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "cpu", "no nvidia-smi: CPU wheel"
    try:
        gpus = query_gpus(smi)
    except RuntimeError as e:
        return "cpu", (
            f"{e}\ncannot tell the GPUs' compute capability: CPU wheel "
            f"(set {VARIANT_ENV}=gpu to override)"
        )
    if not gpus:
        return "cpu", "nvidia-smi lists no GPU: CPU wheel"

    built = "/".join(f"{m}{n}" for m, n in WHEEL_ARCHS)
    good = [(n, c) for n, c in gpus if _is_supported(c)]
    bad = [_describe(n, c) for n, c in gpus if not _is_supported(c)]
    if not good:
        return "cpu", (
            f"{', '.join(bad)} not supported by {GPU_WHEEL} (sm_{built}, no PTX): CPU wheel"
        )
    notes = [f"{_describe(*g)}: {GPU_WHEEL} wheel, CUDA 11 libraries from PyPI" for g in good]
    if bad:
        notes.append(f"unsupported, hide them with CUDA_VISIBLE_DEVICES: {', '.join(bad)}")
    return "gpu", "\n".join(notes)


def main(argv: list[str] | None = None) -> int:
    """Run the command; the exit status is the Makefile's."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["variant"]:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        chosen, reason = variant()
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    print(reason, file=sys.stderr)
    print(chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
