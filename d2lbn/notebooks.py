"""Execute, strip and check the notebooks (what ``make run`` and the tests use)."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat

from .results import write_atomic, write_summary

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# Cell metadata that changes from run to run and means nothing to a reader
VOLATILE = ("execution", "collapsed", "scrolled", "ExecuteTime")


def strip(nb) -> None:
    """Remove execution counts and volatile metadata, in place."""
    for cell in nb.cells:
        for key in VOLATILE:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.execution_count = None
            for out in cell.outputs:
                if "execution_count" in out:
                    out.execution_count = None
    nb.metadata.pop("widgets", None)
    nb.metadata.get("language_info", {}).pop("version", None)


def problems(nb) -> list[str]:
    """What keeps a notebook from being committed: errors, unexecuted cells, counts."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.execution_count is not None:
            found.append(f"cell {i}: execution count {cell.execution_count}")
        if cell.source.strip() and not cell.outputs and "no-output" not in cell.metadata.get(
                "tags", []):
            found.append(f"cell {i}: no output (not executed?)")
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
    client.execute()
    return nb, time.perf_counter() - tic


def run_all(paths: list[Path] | None = None) -> dict[str, float]:
    """Execute each notebook, replace it only when it ran cleanly, write the summary."""
    paths = paths or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    wall = {}
    for path in paths:
        print(f"[d2lbn] running {path.name} ...", flush=True)
        nb, wall[path.stem] = execute(path)  # raises on a failing cell: nothing replaced
        strip(nb)
        trouble = problems(nb)
        if trouble:
            raise RuntimeError(f"{path.name} ran but is not clean: {trouble}")
        write_atomic(path, nbformat.writes(nb) + "\n")
        print(f"[d2lbn] {path.name}: {wall[path.stem]:.0f} s", flush=True)
    json_path, md_path = write_summary(wall)
    print(f"[d2lbn] wrote {json_path} and {md_path}")
    return wall
