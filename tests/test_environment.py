"""The conda environment files agree with pyproject.toml; d2lbn/setup_env.py works."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP_ENV = ROOT / "d2lbn" / "setup_env.py"
ENV_FILES = {"gpu": ROOT / "environment.yml", "cpu": ROOT / "environment-cpu.yml"}

# Loaded from its path, not as d2lbn.setup_env: the package's __init__ imports mxnet, and the
# script must work without it.
_spec = importlib.util.spec_from_file_location("d2lbn_setup_env", SETUP_ENV)
assert _spec is not None and _spec.loader is not None
setup_env = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(setup_env)

SPEC = setup_env.load_project()["requires-python"]


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


def test_pip_entries_are_pyproject_requirements(variant_env: tuple[str, dict]) -> None:
    which, env = variant_env
    pip = [s.replace(" ", "") for s in specs(env["pip"])]
    assert "-e." in pip, "the environment must install d2lbn itself"
    pip.remove("-e.")
    assert sorted(pip) == sorted(setup_env.requirements(which))


def test_mxnet_wheel_matches_variant() -> None:
    gpu, cpu = (specs(read_env(ENV_FILES[w])["pip"]) for w in ("gpu", "cpu"))
    assert "mxnet-cu112==1.9.1" in gpu and "mxnet==1.9.1" not in gpu
    assert "mxnet==1.9.1" in cpu and not any(s.startswith("mxnet-cu") for s in cpu)
    for pins in (gpu, cpu):
        assert {"numpy==1.23.5", "d2l==1.0.3", "ipython<9"} <= set(pins)


def test_python_pin_within_requires_python(variant_env: tuple[str, dict]) -> None:
    _, env = variant_env
    (python,) = [s for s in specs(env["conda"]) if s.startswith("python=")]
    version = tuple(int(x) for x in python.split("=")[1].split("."))
    assert setup_env.version_ok(version + (0,), SPEC)
    assert setup_env.version_ok(version + (99,), SPEC)


def test_gpu_env_has_the_cuda_libraries_the_wheel_links() -> None:
    conda = specs(read_env(ENV_FILES["gpu"])["conda"])
    assert {"cudatoolkit=11.2", "cudnn=8.*", "nccl=2.*"} <= set(conda)
    cuda = re.search(r"mxnet-cu(\d+)(\d)==", " ".join(specs(read_env(ENV_FILES["gpu"])["pip"])))
    assert cuda and f"cudatoolkit={cuda.group(1)}.{cuda.group(2)}" in conda


def test_cpu_env_has_no_cuda() -> None:
    assert specs(read_env(ENV_FILES["cpu"])["conda"]) == ["python=3.11", "pip"]


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
@pytest.mark.parametrize("before", [None, "/opt/other/lib"])
def test_activation_hook_prepends_once(tmp_path: Path, before: str | None) -> None:
    (tmp_path / "lib").mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "CONDA_PREFIX": str(tmp_path)}
    if before:
        env["LD_LIBRARY_PATH"] = before
    hook = ROOT / "env" / "activate-gpu.sh"
    script = f'. "{hook}"; . "{hook}"; printf %s "$LD_LIBRARY_PATH"'
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{tmp_path}/lib" + (f":{before}" if before else "")


# --- setup_env: Python version --------------------------------------------------------------


def test_parse_requires_python() -> None:
    assert setup_env.parse_requires_python(">=3.8,<3.12") == [(">=", (3, 8)), ("<", (3, 12))]
    with pytest.raises(ValueError):
        setup_env.parse_requires_python(">=3.8,<3.12.*")


@pytest.mark.parametrize(
    ("version", "ok"),
    [((3, 8, 0), True), ((3, 11, 7), True), ((3, 7, 17), False), ((3, 12, 0), False)],
)
def test_version_ok(version: tuple[int, ...], ok: bool) -> None:
    assert setup_env.version_ok(version, ">=3.8,<3.12") is ok


def test_check_python_accepts_311() -> None:
    ok, _ = setup_env.check_python((3, 11, 7))
    assert ok


def test_check_python_refuses_312_and_names_a_supported_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(setup_env.shutil, "which", lambda name: None)
    ok, message = setup_env.check_python((3, 12, 1))
    assert not ok
    assert "3.12.1" in message and "numpy" in message
    assert "make PYTHON=python3.11" in message and "install python3.11" in message


def test_check_python_refuses_37_without_the_numpy_reason() -> None:
    ok, message = setup_env.check_python((3, 7, 3))
    assert not ok and "3.7.3" in message and "numpy" not in message


def test_check_python_prefers_an_installed_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        setup_env.shutil,
        "which",
        lambda name: "/usr/bin/python3.9" if name == "python3.9" else None,
    )
    ok, message = setup_env.check_python((3, 13, 0), ">=3.8,<3.12")
    assert not ok and message.endswith("make PYTHON=python3.9")


def test_cli_check_python_passes_here() -> None:
    out = subprocess.run([sys.executable, str(SETUP_ENV), "check-python"], capture_output=True)
    assert out.returncode == (0 if setup_env.version_ok(sys.version_info[:3], SPEC) else 1)


# --- setup_env: pyproject and requirements --------------------------------------------------


def test_fallback_parser_agrees_with_tomllib() -> None:
    tomllib = pytest.importorskip("tomllib")
    text = setup_env.PYPROJECT.read_text(encoding="utf-8")
    want = tomllib.loads(text)["project"]
    got = setup_env.parse_project_table(text)
    for key in ("requires-python", "dependencies", "optional-dependencies"):
        assert got[key] == want[key]


def test_requirements_cpu() -> None:
    reqs = setup_env.requirements("cpu")
    assert "mxnet==1.9.1" in reqs and not any("mxnet-cu" in r for r in reqs)
    assert {"numpy==1.23.5", "d2l==1.0.3", "pytest", "nbval", "ruff"} <= set(reqs)


def test_requirements_gpu() -> None:
    reqs = setup_env.requirements("gpu")
    assert "mxnet-cu112==1.9.1" in reqs and "mxnet==1.9.1" not in reqs


def test_requirements_rejects_unknown_variant() -> None:
    with pytest.raises(ValueError):
        setup_env.requirements("tpu")


def test_cli_requirements_runs_without_site_packages() -> None:
    # -S: no site-packages, so the script must get by on the standard library alone
    cmd = [sys.executable, "-S", str(SETUP_ENV), "requirements", "gpu"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == setup_env.requirements("gpu")


# --- setup_env: variant ---------------------------------------------------------------------


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


def test_variant_old_driver_is_cpu(empty_path: Path) -> None:
    fake_nvidia_smi(empty_path, 'Field "compute_cap" is not a valid field to query.', status=2)
    chosen, reason = setup_env.variant({})
    assert chosen == "cpu" and "compute capability" in reason


@pytest.mark.skipif(sys.platform != "linux", reason="ELF shared libraries")
def test_missing_cuda_libs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setup_env, "CUDA_LIBS", ("libc.so.6", "libd2lbn-nonexistent.so.1"))
    assert setup_env.missing_cuda_libs() == ["libd2lbn-nonexistent.so.1"]


def test_variant_supported_gpu_without_cuda_libs_is_cpu(
    empty_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_nvidia_smi(empty_path, "NVIDIA GeForce RTX 3090, 8.6")
    monkeypatch.setattr(setup_env, "missing_cuda_libs", lambda: ["libcudnn.so.8"])
    chosen, reason = setup_env.variant({})
    assert chosen == "cpu" and "libcudnn.so.8" in reason


def test_variant_supported_gpu_is_gpu(empty_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(empty_path, "NVIDIA H100 PCIe, 9.0\nNVIDIA A100-SXM4-40GB, 8.0")
    monkeypatch.setattr(setup_env, "missing_cuda_libs", lambda: [])
    chosen, reason = setup_env.variant({})
    assert chosen == "gpu"
    assert "sm_80" in reason and "CUDA_VISIBLE_DEVICES" in reason and "H100" in reason


def test_variant_ada_is_gpu_with_a_fusion_note(
    empty_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_nvidia_smi(empty_path, "NVIDIA GeForce RTX 4090, 8.9")
    monkeypatch.setattr(setup_env, "missing_cuda_libs", lambda: [])
    chosen, reason = setup_env.variant({})
    assert chosen == "gpu" and "MXNET_USE_FUSION=0" in reason


def test_cli_variant_without_nvidia_smi(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "D2LBN_VARIANT"}
    env["PATH"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, str(SETUP_ENV), "variant"], env=env, capture_output=True, text=True
    )
    assert (out.returncode, out.stdout) == (0, "cpu\n")
    assert "no nvidia-smi" in out.stderr
