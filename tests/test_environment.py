"""Set-up: env files install pyproject.toml's extras; the Makefile; the mxnet hook; GPU probe."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import d2lbn_mxnet_hook as hook

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
ENV_FILES = {"gpu": ROOT / "environment.yml", "cpu": ROOT / "environment-cpu.yml"}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")
SUPPORTED = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]

# Loaded from its path, not as d2lbn.setup_env: the package's __init__ imports mxnet, and the
# script must work without it.
SETUP_ENV = ROOT / "d2lbn" / "lab" / "setup_env.py"
_spec = importlib.util.spec_from_file_location("d2lbn_setup_env", SETUP_ENV)
assert _spec is not None and _spec.loader is not None
setup_env = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(setup_env)


def installed(variant: str, python: str, no_deps: bool = False) -> dict[str, Requirement]:
    """What pip installs on Python ``python`` for `make`'s extras, or its --no-deps line."""
    if no_deps:
        line = re.search(rf"^NO_DEPS_{variant} :=((?:.*\\\n)*.*)", MAKEFILE, re.MULTILINE)
        reqs = re.findall(r'"([^"]+)"', line.group(1)) if line else []
    else:
        extras = PROJECT["optional-dependencies"]
        reqs = PROJECT["dependencies"] + extras[variant] + extras["test"]
    env = {"python_version": python, "python_full_version": f"{python}.0", "extra": ""}
    parsed = [Requirement(r) for r in reqs]
    return {r.name: r for r in parsed if r.marker is None or r.marker.evaluate(env)}


def read_env(path: Path) -> dict:
    """name, channels and the (spec, comment) of each conda and pip entry of an env file."""
    env: dict = {"name": None, "channels": [], "conda": [], "pip": []}
    key, pip_indent = None, None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        top = re.fullmatch(r"([A-Za-z_]+):\s*(.*?)\s*", line)
        if top:
            key = top.group(1)
            if key == "name":
                env["name"] = top.group(2)
            continue
        m = re.fullmatch(r"(\s*)-\s+(.*?)\s*(?:#\s*(.*))?", line)
        assert m, f"{path.name}: cannot read {line!r}"
        indent, spec, comment = len(m.group(1)), m.group(2), m.group(3) or ""
        if key == "channels":
            env["channels"].append(spec)
        elif spec == "pip:":
            pip_indent = indent
        else:
            inside_pip = pip_indent is not None and indent > pip_indent
            env["pip" if inside_pip else "conda"].append((spec, comment))
    return env


def specs(entries: list[tuple[str, str]]) -> list[str]:
    """The specs of (spec, comment) entries."""
    return [spec for spec, _ in entries]


@pytest.fixture(params=sorted(ENV_FILES))
def variant_env(request: pytest.FixtureRequest) -> tuple[str, dict]:
    """(variant, parsed env file), for each of the two files."""
    return request.param, read_env(ENV_FILES[request.param])


# --- environment files --------------------------------------------------------------------


def test_env_files_are_yaml_with_the_same_entries(variant_env: tuple[str, dict]) -> None:
    yaml = pytest.importorskip("yaml")
    which, env = variant_env
    data = yaml.safe_load(ENV_FILES[which].read_text(encoding="utf-8"))
    *conda, pip = data["dependencies"]
    assert conda == specs(env["conda"])
    assert pip == {"pip": specs(env["pip"])}
    assert data["name"] == env["name"] and data["channels"] == env["channels"]


def test_env_names_and_channels(variant_env: tuple[str, dict]) -> None:
    which, env = variant_env
    assert env["name"] == f"d2lbn-{which}"
    assert env["channels"] == ["conda-forge", "nodefaults"]


def test_every_entry_says_what_needs_it(variant_env: tuple[str, dict]) -> None:
    _, env = variant_env
    bare = [spec for spec, comment in env["conda"] + env["pip"] if not comment.strip()]
    assert not bare, f"entries without a comment: {bare}"


def test_conda_gives_python_and_pip_only(variant_env: tuple[str, dict]) -> None:
    _, env = variant_env
    (python, pip) = specs(env["conda"])
    assert python.startswith("python=") and pip == "pip"
    assert SpecifierSet(PROJECT["requires-python"]).contains(python.split("=")[1] + ".0")


def test_pip_installs_d2lbn_with_its_extras_only(variant_env: tuple[str, dict]) -> None:
    which, env = variant_env
    assert [s.replace(" ", "") for s in specs(env["pip"])] == [f"-e.[{which},test]"]
    # On the file's Python the extras bring every pin: none waits for make's --no-deps line
    (python,) = [s.split("=")[1] for s in specs(env["conda"]) if s.startswith("python=")]
    assert not installed(which, python, no_deps=True)
    mxnet = "mxnet-cu112" if which == "gpu" else "mxnet"
    assert {mxnet, "d2l", "numpy", "pytest", "nbval"} <= set(installed(which, python))


# --- pyproject.toml and the Makefile ------------------------------------------------------


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
@pytest.mark.parametrize("python", SUPPORTED)
def test_every_python_gets_mxnet_and_d2l_once(variant: str, python: str) -> None:
    with_deps, without = installed(variant, python), installed(variant, python, no_deps=True)
    pins = {"mxnet-cu112" if variant == "gpu" else "mxnet": "==1.9.1", "d2l": "==1.0.3"}
    for name, pin in pins.items():
        assert (name in with_deps) != (name in without), (name, python)
        assert str({**with_deps, **without}[name].specifier) == pin


@pytest.mark.parametrize(
    ("python", "pin"), [("3.8", "==1.23.5"), ("3.11", "==1.23.5"), ("3.12", "==1.26.4")]
)
def test_numpy_pins(python: str, pin: str) -> None:
    reqs = installed("cpu", python)
    assert str(reqs["numpy"].specifier) == pin
    assert ("setuptools" in reqs) == (python == "3.12")  # mxnet imports distutils


def test_numpy_2_and_distutils_on_313() -> None:
    reqs = installed("cpu", "3.13")
    assert reqs["numpy"].specifier.contains("2.3.5") and "setuptools" in reqs


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux: counts usable cores")
def test_make_counts_cores_despite_its_own_omp_setting() -> None:
    # The Makefile exports OMP_NUM_THREADS=1, which nproc would otherwise obey in sub-makes
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("JOBS", None)
    shown = subprocess.run(["make", "-n", "-s", "unit"], cwd=ROOT, env=env, capture_output=True,
                           text=True, check=True).stdout
    assert f"pytest tests -q -n {len(os.sched_getaffinity(0))} " in shown


def test_requires_python_is_what_make_test_covers() -> None:
    spec = SpecifierSet(PROJECT["requires-python"])
    assert [v for v in SUPPORTED + ["3.7", "3.14"] if spec.contains(f"{v}.0")] == SUPPORTED
    pythons = re.search(r"^PYTHONS \?= (.*)$", MAKEFILE, re.MULTILINE).group(1).split()
    assert pythons == ["3.12", "3.13"]


def test_gpu_extra_has_the_cuda_11_libraries() -> None:
    gpu = installed("gpu", "3.11")
    assert str(gpu["nvidia-cudnn-cu11"].specifier) == "==8.*"  # libmxnet.so links libcudnn.so.8
    libs = {"cuda-runtime", "cublas", "cufft", "curand", "cusolver", "cuda-nvrtc", "nvtx", "nccl"}
    assert {f"nvidia-{lib}-cu11" for lib in libs} <= set(gpu)
    assert not any(name.startswith("nvidia") for name in installed("cpu", "3.11"))


# --- d2lbn_mxnet_hook -----------------------------------------------------------------------


def fake_numpy(**present: object) -> types.ModuleType:
    """A module with what the hook reads from numpy, plus ``present``."""
    fake = types.ModuleType("numpy")
    fake.all, fake.any, fake.prod, fake.round = all, any, numpy.prod, round
    fake.sort = numpy.sort
    for name, value in present.items():
        setattr(fake, name, value)
    return fake


def test_restore_numpy_names_fills_in_only_what_is_missing() -> None:
    fake = fake_numpy(bool=numpy.bool_)
    missing = hook.restore_numpy_names(fake)
    assert "bool" not in missing and fake.bool is numpy.bool_
    assert (fake.int, fake.float, fake.object, fake.str) == (int, float, object, str)
    assert fake.alltrue is all and fake.product is numpy.prod and fake.NINF == -numpy.inf
    assert fake.msort(numpy.array([[2, 1], [1, 2]])).tolist() == [[1, 1], [2, 2]]
    with pytest.raises(RuntimeError, match="numpy_financial"):
        fake.npv(0.1, [1, 2])
    assert hook.restore_numpy_names(fake) == []


def test_numpy_scalars_print_as_mxnet_parses_them() -> None:
    # mxnet writes operator parameters with str(); numpy 2 alone would print np.int64(16)
    assert hook.keep_numpy1_reprs(numpy) == numpy.__version__.startswith("2.")
    assert repr(numpy.int64(16)) == "16" and str([0, numpy.int64(16)]) == "[0, 16]"


# numpy as numpy >= 1.24 and 2.0 are, for mxnet: without the names that they removed
# (numpy 1.23 serves some of them through its module __getattr__, with a warning)
WITHOUT_REMOVED_NAMES = """
import numpy, d2lbn_mxnet_hook as hook
names = (*hook.ALIASES, *hook.CONSTANTS, *hook.RENAMED, *hook.FINANCIAL, "msort")
for name in names:
    numpy.__dict__.pop(name, None)
served = numpy.__dict__.get("__getattr__")
def __getattr__(name):
    if name in names or served is None:
        raise AttributeError(name)
    return served(name)
numpy.__getattr__ = __getattr__
assert not any(hasattr(numpy, name) for name in names)
"""


def test_a_fresh_interpreter_imports_mxnet_first() -> None:
    # as a notebook does: mxnet before d2lbn, so only the .pth can ready numpy; mxnet 1.9.1
    # reads numpy.bool at import, so without the hook the import fails
    code = WITHOUT_REMOVED_NAMES + (
        "import mxnet\n"
        "print(all(hasattr(numpy, name) for name in names), numpy.int is int,\n"
        "      mxnet.np.ones(2).sum().item())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "2.0"]


def test_the_pth_installs_the_finder(tmp_path: Path) -> None:
    path = hook.write_pth(tmp_path)
    assert path.read_text() == "import d2lbn_mxnet_hook; d2lbn_mxnet_hook.install()\n"
    code = (
        "import site, sys; site.addsitedir(sys.argv[1]); import d2lbn_mxnet_hook as h; "
        "print(sys.meta_path[0] is h.BeforeMXNet)"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert (out.returncode, out.stdout, out.stderr) == (0, "True\n", "")


def test_finder_readies_once_and_finds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delitem(sys.modules, "mxnet", raising=False)
    calls = []
    monkeypatch.setattr(hook, "restore_numpy_names", lambda np: calls.append("numpy"))
    monkeypatch.setattr(hook, "keep_numpy1_reprs", lambda np: calls.append("reprs"))
    monkeypatch.setattr(hook, "load_cuda_libraries", lambda: calls.append("cuda"))
    hook.install()
    hook.install()
    assert sys.meta_path.count(hook.BeforeMXNet) == 1 and sys.meta_path[0] is hook.BeforeMXNet
    assert hook.BeforeMXNet.find_spec("numpy") is None and calls == []
    assert hook.BeforeMXNet.find_spec("mxnet") is None
    assert calls == ["numpy", "reprs", "cuda"] and hook.BeforeMXNet not in sys.meta_path


def test_install_leaves_an_imported_mxnet_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.setitem(sys.modules, "mxnet", types.ModuleType("mxnet"))
    hook.install()
    assert hook.BeforeMXNet not in sys.meta_path


def test_cuda_libraries_load_by_real_path_in_link_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for lib in reversed(hook.CUDA_LIBS):  # a wheel's folder: nvidia/<component>/lib/
        folder = tmp_path / "site" / "nvidia" / lib.split(".so")[0][3:] / "lib"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / lib).touch()
    (tmp_path / "site" / "nvidia" / "cudnn" / "lib" / "libcudnn_ops_infer.so.8").touch()
    loaded = []
    monkeypatch.setattr(ctypes, "CDLL", lambda path, mode: loaded.append((path, mode)))
    libs = hook.load_cuda_libraries([str(tmp_path / "empty"), str(tmp_path / "site")])
    assert [Path(p).name for p, _ in loaded] == list(hook.CUDA_LIBS)
    assert all(Path(p).parent.parent.parent.name == "nvidia" for p, _ in loaded)
    assert {mode for _, mode in loaded} == {ctypes.RTLD_GLOBAL} and len(libs) == len(loaded)
    assert hook.load_cuda_libraries([str(tmp_path / "empty")]) == []


# --- setup_env: the GPU probe ---------------------------------------------------------------


@pytest.mark.parametrize("cap", ["5.0", "5.2", "6.0", "6.1", "7.0", "7.5", "8.0", "8.6", "8.9"])
def test_supported(cap: str) -> None:
    assert setup_env.supported(cap)


@pytest.mark.parametrize("cap", ["3.5", "3.7", "9.0", "10.0", "12.0"])
def test_not_supported(cap: str) -> None:
    assert not setup_env.supported(cap)


def test_supported_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        setup_env.supported("[N/A]")


def fake_nvidia_smi(folder: Path, output: str, status: int = 0) -> None:
    """An nvidia-smi in folder that prints output and exits with status."""
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\nexit {status}\n")
    smi.chmod(0o755)


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH of one empty folder, so no nvidia-smi unless a test puts one there."""
    monkeypatch.setenv("PATH", str(tmp_path))
    return tmp_path


def test_variant_without_nvidia_smi_is_cpu(empty_path: Path) -> None:
    assert setup_env.variant({}) == ("cpu", "no nvidia-smi: CPU wheel")


@pytest.mark.parametrize("forced", ["cpu", "gpu", "GPU "])
def test_variant_override_wins(empty_path: Path, forced: str) -> None:
    fake_nvidia_smi(empty_path, "NVIDIA GeForce RTX 3090, 8.6")
    chosen, _ = setup_env.variant({"D2LBN_VARIANT": forced})
    assert chosen == forced.strip().lower()


def test_variant_override_must_be_cpu_or_gpu() -> None:
    with pytest.raises(ValueError):
        setup_env.variant({"D2LBN_VARIANT": "tpu"})


def test_variant_hopper_is_cpu(empty_path: Path) -> None:
    fake_nvidia_smi(empty_path, "NVIDIA H100 80GB HBM3, 9.0")
    chosen, reason = setup_env.variant({})
    assert chosen == "cpu" and "'NVIDIA H100 80GB HBM3' sm_90 not supported" in reason
    assert "no PTX" in reason


def test_variant_old_driver_is_cpu(empty_path: Path) -> None:
    fake_nvidia_smi(empty_path, 'Field "compute_cap" is not a valid field to query.', status=2)
    chosen, reason = setup_env.variant({})
    assert chosen == "cpu" and "compute capability" in reason


@pytest.mark.parametrize(("gpu", "cap"), [("NVIDIA GeForce RTX 4090", "8.9"), ("Tesla T4", "7.5")])
def test_variant_supported_gpu_needs_no_system_cuda(empty_path: Path, gpu: str, cap: str) -> None:
    fake_nvidia_smi(empty_path, f"{gpu}, {cap}")
    assert setup_env.variant({})[0] == "gpu"


def test_variant_mixed_gpus_is_gpu_with_a_note(empty_path: Path) -> None:
    fake_nvidia_smi(empty_path, "NVIDIA H100 PCIe, 9.0\nNVIDIA A100-SXM4-40GB, 8.0")
    chosen, reason = setup_env.variant({})
    assert chosen == "gpu"
    assert "sm_80" in reason and "CUDA_VISIBLE_DEVICES" in reason and "H100" in reason


def test_cli_variant_without_nvidia_smi(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "D2LBN_VARIANT"}
    env["PATH"] = str(tmp_path)
    # -S: no site-packages, so the script must get by on the standard library alone
    out = subprocess.run(
        [sys.executable, "-S", str(SETUP_ENV), "variant"], env=env, capture_output=True, text=True
    )
    assert (out.returncode, out.stdout) == (0, "cpu\n")
    assert "no nvidia-smi" in out.stderr


def test_cli_usage() -> None:
    out = subprocess.run([sys.executable, str(SETUP_ENV)], capture_output=True, text=True)
    assert out.returncode == 2 and "variant" in out.stderr
