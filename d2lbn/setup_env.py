"""Set-up helper for the Makefile: Python check, CPU/GPU choice, pip requirements.

Standard library only: it runs under the system python3 before numpy or mxnet exist.

    python3 d2lbn/setup_env.py check-python        # exit 1 if this Python cannot run MXNet 1.9.1
    python3 d2lbn/setup_env.py variant             # print cpu or gpu (the reason on stderr)
    python3 d2lbn/setup_env.py requirements gpu    # print the pip requirement lines
"""

from __future__ import annotations

import ctypes
import operator
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
VARIANTS = ("cpu", "gpu")
VARIANT_ENV = "D2LBN_VARIANT"
WHY_PYTHON = "MXNet 1.9.1 needs numpy<1.24, which has no wheel for Python 3.12+"
GPU_WHEEL = "mxnet-cu112 1.9.1"

# Cubins in the wheel's libmxnet.so (read from its .nv_fatbin section); it has no PTX, so
# no GPU of another major version can run it.
WHEEL_ARCHS = ((5, 0), (6, 0), (7, 0), (8, 0), (8, 6))
# MXNet compiles fused kernels at run time with NVRTC 11.2, whose newest target is compute_86.
NVRTC_MAX = (8, 6)
# What libmxnet.so links besides the driver's libcuda.so.1 (its DT_NEEDED entries).
CUDA_LIBS = (
    "libcudart.so.11.0",
    "libcublas.so.11",
    "libcufft.so.10",
    "libcurand.so.10",
    "libcusolver.so.11",
    "libnvrtc.so.11.2",
    "libnvToolsExt.so.1",
    "libcudnn.so.8",
    "libnccl.so.2",
)

_SPEC = re.compile(r"\s*(~=|==|!=|<=|>=|<|>)\s*(\d+(?:\.\d+)*)\s*")
_COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


# --- pyproject.toml -------------------------------------------------------------------------


def _strip_comment(line: str) -> str:
    """The line without its trailing TOML comment ('#' outside a string)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


def parse_project_table(text: str) -> dict:
    """The [project] fields this script needs, read without tomllib (Python < 3.11)."""
    project: dict = {"optional-dependencies": {}}
    section, key, buf = "", "", ""
    for raw in text.splitlines():
        line = _strip_comment(raw).strip()
        if key:  # inside a multi-line array
            buf += " " + line
        elif re.fullmatch(r"\[[^\[\]]+\]", line):
            section = line[1:-1].strip()
            continue
        else:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*=\s*(.*)", line)
            if not m:
                continue
            key, buf = m.group(1), m.group(2)
        if buf.startswith("[") and not buf.rstrip().endswith("]"):
            continue  # the array goes on over the next lines
        value: object
        if buf.startswith("["):
            value = [a or b for a, b in re.findall(r'"([^"]*)"|\'([^\']*)\'', buf)]
        else:
            value = buf.strip().strip("\"'")
        if section == "project":
            project[key] = value
        elif section == "project.optional-dependencies":
            project["optional-dependencies"][key] = value
        key, buf = "", ""
    return project


def load_project(path: Path = PYPROJECT) -> dict:
    """The [project] table of pyproject.toml (tomllib when there is one)."""
    text = path.read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        return parse_project_table(text)
    return tomllib.loads(text)["project"]


# --- check-python ---------------------------------------------------------------------------


def parse_requires_python(spec: str) -> list[tuple[str, tuple[int, ...]]]:
    """``">=3.8,<3.12"`` as ``[(">=", (3, 8)), ("<", (3, 12))]``."""
    clauses = []
    for part in spec.split(","):
        m = _SPEC.fullmatch(part)
        if not m:
            raise ValueError(f"unsupported requires-python clause {part.strip()!r} in {spec!r}")
        clauses.append((m.group(1), tuple(int(x) for x in m.group(2).split("."))))
    return clauses


def version_ok(version: tuple[int, ...], spec: str) -> bool:
    """Whether a release version (3, 11, 7) satisfies a requires-python spec."""
    for op, bound in parse_requires_python(spec):
        n = max(len(version), len(bound))
        v, b = version + (0,) * (n - len(version)), bound + (0,) * (n - len(bound))
        if op == "~=":  # compatible release: >= bound, same prefix except the last part
            ok = v >= b and v[: len(bound) - 1] == bound[:-1]
        else:
            ok = _COMPARE[op](v, b)
        if not ok:
            return False
    return True


def _allowed_minors(spec: str) -> list[int]:
    """The minor versions X of Python 3.X that spec allows, newest first."""
    return [m for m in range(30, -1, -1) if version_ok((3, m, 99), spec)]


def suggest_python(spec: str) -> str:
    """The newest python3.X allowed by spec, preferring one installed on PATH."""
    allowed = [f"python3.{m}" for m in _allowed_minors(spec)]
    if not allowed:
        raise ValueError(f"requires-python {spec!r} allows no Python 3")
    return next((name for name in allowed if shutil.which(name)), allowed[0])


def check_python(
    version: tuple[int, ...] | None = None, spec: str | None = None
) -> tuple[bool, str]:
    """(ok, message) for running d2lbn on ``version`` (default: this interpreter)."""
    version = tuple(sys.version_info[:3]) if version is None else version
    spec = load_project()["requires-python"] if spec is None else spec
    shown = ".".join(map(str, version))
    if version_ok(version, spec):
        return True, f"Python {shown} satisfies requires-python {spec}"
    name = suggest_python(spec)
    too_new = tuple(version[:2]) > (3, _allowed_minors(spec)[0])
    why = f", because {WHY_PYTHON}" if too_new else ""
    hint = "" if shutil.which(name) else f" (install {name} first)"
    return False, (
        f"Python {shown} cannot run d2lbn: it needs Python {spec}{why}.\n"
        f"Use {name}: make PYTHON={name}{hint}"
    )


# --- variant --------------------------------------------------------------------------------


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


def missing_cuda_libs() -> list[str]:
    """The libraries libmxnet.so links that the dynamic loader cannot find here."""
    missing = []
    for lib in CUDA_LIBS:
        try:
            ctypes.CDLL(lib)
        except OSError:
            missing.append(lib)
    return missing


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
        return "cpu", f"{', '.join(bad)} not supported by {GPU_WHEEL} (sm_{built}): CPU wheel"

    missing = missing_cuda_libs()
    if missing:
        return "cpu", (
            f"{_describe(*good[0])} is supported, but the CUDA 11 libraries {GPU_WHEEL} links "
            f"are missing ({', '.join(missing)}): CPU wheel. Install CUDA 11.2, cuDNN 8 and "
            f"NCCL 2 (or use environment.yml with conda), or set {VARIANT_ENV}=gpu"
        )

    notes = [f"{_describe(*g)}: {GPU_WHEEL} wheel" for g in good]
    if bad:
        notes.append(f"unsupported, hide them with CUDA_VISIBLE_DEVICES: {', '.join(bad)}")
    if any(parse_compute_cap(c) > NVRTC_MAX for _, c in good):
        notes.append(
            "NVRTC 11.2 cannot compile fused kernels for this GPU: "
            "set MXNET_USE_FUSION=0 if a hybridized network fails"
        )
    return "gpu", "\n".join(notes)


# --- requirements ---------------------------------------------------------------------------


def requirements(which: str, path: Path = PYPROJECT) -> list[str]:
    """pip requirement lines for a variant: dependencies, its extra and the test extra."""
    if which not in VARIANTS:
        raise ValueError(f"variant must be cpu or gpu, not {which!r}")
    project = load_project(path)
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *extras[which], *extras["test"]]


# --- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status is the Makefile's."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["check-python"]:
        ok, message = check_python()
        if not ok:
            print(message, file=sys.stderr)
        return 0 if ok else 1
    if args == ["variant"]:
        try:
            chosen, reason = variant()
        except ValueError as e:
            print(e, file=sys.stderr)
            return 2
        print(reason, file=sys.stderr)
        print(chosen)
        return 0
    if len(args) == 2 and args[0] == "requirements" and args[1] in VARIANTS:
        print("\n".join(requirements(args[1])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
