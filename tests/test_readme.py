"""The README stays true: its tables follow the tree, and it holds no figure a run rewrites."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import nbformat

from d2lbn.lab import prose

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
NOTEBOOK_ROW = re.compile(r"^\| (\d\d) \| \[[^\]]+\]\((notebooks/[^)]+\.ipynb)\) \|", re.MULTILINE)


def first_cells(header: str) -> list[str]:
    """The first cell of each body row of the README table whose header starts ``header``."""
    lines = README[README.index(header):].splitlines()[2:]
    return [line.split("|")[1].strip() for line in itertools.takewhile(
        lambda line: line.startswith("|"), lines)]


def test_the_package_tables_match_the_tree():
    package = ROOT / "d2lbn"
    named = {n for cell in first_cells("| module | holds |") + first_cells("| package | holds |")
             for n in re.findall(r"`(\w+)`", cell)}
    tree = {p.stem for p in package.glob("*.py") if not p.stem.startswith("_")}
    tree |= {p.parent.name for p in package.glob("*/__init__.py")} - {"lab"}
    assert named == tree
    lab = {n for cell in first_cells("| module | holds |\n|---|---|\n| `lab.")
           for n in re.findall(r"`lab\.(\w+)`", cell)}
    assert lab == {p.stem for p in (package / "lab").glob("*.py") if p.stem != "__init__"}


def test_every_notebook_has_a_row():
    rows = NOTEBOOK_ROW.findall(README)
    assert sorted(path for _, path in rows) == sorted(
        f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb"))
    for number, path in rows:
        assert Path(path).stem.startswith(number)


def test_no_figure_that_a_run_rewrites():
    # Wall times live in results/summary.md, which every run rewrites, not in this text
    assert not re.search(r"\d+ s of notebooks|took \d+ min|\| \d+ s \|$", README, re.MULTILINE)


def test_notebook_rows_quote_only_figures_their_notebook_shows():
    # A row follows its notebook's prose rule: a figure a re-run would change (one only an
    # ignored output shows) stays out
    missing = []
    for line in README.splitlines():
        row = NOTEBOOK_ROW.match(line)
        if row:
            nb = nbformat.read(ROOT / row.group(2), as_version=4)
            numbers = prose.printed_numbers(nb)
            missing += [f"{row.group(1)}: {figure}"
                        for figure in prose.unshown(line.split("|", 3)[3], numbers)]
    assert missing == []
