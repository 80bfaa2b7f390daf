"""Execute, strip and check the notebooks (what ``make run`` and the tests use)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import nbformat

from . import config
from .results import RESULTS_ENV, results_dir, write_atomic, write_summary

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# Cell metadata that changes from run to run and means nothing to a reader
VOLATILE = ("execution", "collapsed", "scrolled", "ExecuteTime")


def strip(nb) -> None:
    """Remove execution counts and volatile metadata, in place."""
    for cell in nb.cells:
        for key in VOLATILE:
            cell.metadata.pop(key, None)
    _set_execution_counts(nb, numbered=False)
    nb.metadata.pop("widgets", None)
    nb.metadata.get("language_info", {}).pop("version", None)


def numbered_copies(dest: str | Path, paths: list[Path] | None = None) -> list[Path]:
    """Copies of the notebooks with execution counts 1, 2, ... for nbval.

    nbval refuses a reference cell that has outputs but no execution count, and the
    committed notebooks have their counts stripped.
    """
    dest = _mkdir(Path(dest))
    copies = []
    for path in paths or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        _set_execution_counts(nb, numbered=True)
        copies.append(dest / path.name)
        nbformat.write(nb, copies[-1])
    return copies


def _set_execution_counts(nb, numbered: bool) -> None:
    """Number the code cells that have outputs 1, 2, ... (``numbered``), or clear all counts."""
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if numbered and cell.outputs:
            count += 1
        value = count if numbered and cell.outputs else None
        cell.execution_count = value
        for out in cell.outputs:
            if "execution_count" in out:
                out.execution_count = value


def code_digest(nb) -> str:
    """SHA-1 of the code cells' sources: tells whether code changed after a run."""
    code = "\0".join(c.source for c in nb.cells if c.cell_type == "code")
    return hashlib.sha1(code.encode()).hexdigest()


def stamp(nb) -> None:
    """Mark a notebook as executed in this mode with its current code."""
    nb.metadata["d2lbn"] = {"mode": "quick" if config.is_quick() else "full",
                            "code_sha1": code_digest(nb)}


def problems(nb) -> list[str]:
    """What keeps a notebook from being committed: no full run, stale code, errors, counts."""
    run = nb.metadata.get("d2lbn", {})
    found = []
    if not run:
        found.append("not executed by `make run` (no run stamp)")
    elif run.get("mode") != "full":
        found.append(f"outputs come from a {run.get('mode')} run, not a full one")
    elif run.get("code_sha1") != code_digest(nb):
        found.append("code cells changed since the last run")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.execution_count is not None:
            found.append(f"cell {i}: execution count {cell.execution_count}")
        for out in cell.outputs:
            if out.output_type == "error":
                found.append(f"cell {i}: error {out.ename}: {out.evalue}")
            if out.get("execution_count") is not None:
                found.append(f"cell {i}: output execution count")
    return found


def execute(path: Path, timeout: int = 7200) -> tuple[object, float]:
    """Run a notebook top to bottom in its folder; return it and its wall time."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    tic = time.perf_counter()
    try:
        client.execute()
    except Exception as err:
        err.nb = nb  # the partly executed notebook, for the caller to keep
        raise
    return nb, time.perf_counter() - tic


def run_all(paths: list[Path] | None = None) -> dict[str, float]:
    """Execute notebooks; replace them and ``results/`` only if every one ran cleanly.

    Runs go to a staging folder first (seeded with the recorded runs, which later
    notebooks read), so a failure leaves the committed notebooks and results as
    they were; the failed notebook is kept in the staging folder to look at.
    """
    paths = paths or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    final = results_dir()
    staging = Path(tempfile.mkdtemp(prefix="run-", dir=_mkdir(final / ".tmp")))
    if (final / "runs").exists():
        shutil.copytree(final / "runs", staging / "runs")
    executed, wall = {}, {}
    old_env = os.environ.get(RESULTS_ENV)
    # Kernels inherit the environment: their record() calls land in staging
    os.environ[RESULTS_ENV] = str(staging)
    try:
        for path in paths:
            print(f"[d2lbn] running {path.name} ...", flush=True)
            try:
                nb, wall[path.stem] = execute(path)
            except Exception as err:
                failed = getattr(err, "nb", None)
                if failed is not None:
                    nbformat.write(failed, staging / path.name)
                raise RuntimeError(f"{path.name} failed ({type(err).__name__}); nothing was "
                                   f"replaced. Executed copy and partial runs: {staging}") from err
            strip(nb)
            stamp(nb)
            trouble = [p for p in problems(nb) if "quick run" not in p]
            if trouble:
                raise RuntimeError(f"{path.name} ran but is not clean: {trouble}")
            executed[path] = nb
            print(f"[d2lbn] {path.name}: {wall[path.stem]:.0f} s", flush=True)
    finally:
        if old_env is None:
            os.environ.pop(RESULTS_ENV)
        else:
            os.environ[RESULTS_ENV] = old_env
    for path, nb in executed.items():
        write_atomic(path, nbformat.writes(nb) + "\n")
    for record in (staging / "runs").glob("*.json"):
        write_atomic(final / "runs" / record.name, record.read_text())
    shutil.rmtree(staging)
    json_path, md_path = write_summary(wall)
    print(f"[d2lbn] wrote {json_path} and {md_path}")
    return wall


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
