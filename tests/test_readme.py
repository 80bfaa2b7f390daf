"""The README's figures are the committed runs' figures: its tables must follow the results."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from d2lbn.lab import bench

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
NOTEBOOK_ROW = re.compile(r"^\| (\d\d) \| \[[^\]]+\]\((notebooks/[^)]+\.ipynb)\) \|", re.MULTILINE)


def close(shown: float, value: float) -> bool:
    """Whether ``shown`` is ``value`` rounded to the README's 2 decimals or 3 digits."""
    return abs(shown - value) <= max(0.006 * abs(value), 0.0051)


def table_rows(first_header: str) -> list[list[str]]:
    """The body cells of the README table whose first header cell is ``first_header``."""
    lines = README[README.index(f"| {first_header} |"):].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def numbers(cell: str) -> list[float]:
    return [float(n) for n in re.findall(r"\d+(?:\.\d+)?", cell)]


@pytest.fixture(scope="module")
def bench_result():
    return json.loads((ROOT / "results" / "bench.json").read_text())


def test_every_notebook_has_a_row():
    rows = NOTEBOOK_ROW.findall(README)
    assert sorted(path for _, path in rows) == sorted(
        f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb"))
    for number, path in rows:
        assert Path(path).stem.startswith(number)


def test_no_figure_that_a_run_rewrites():
    # Wall times live in results/summary.md, which every run rewrites, not in this text
    assert not re.search(r"\d+ s of notebooks|took \d+ min|\| \d+ s \|$", README, re.MULTILINE)


def test_lenet_table_is_the_committed_bench_run(bench_result):
    lenet = bench_result["lenet"]
    ref = next(r for r in lenet if r["variant"] == "gluon_hybrid")
    rows = table_rows("LeNet training")
    assert len(rows) == len(lenet)
    for (_, speed, ratio, per_round), r in zip(rows, lenet):
        assert close(float(speed), r["examples_per_sec"]), r["variant"]
        assert close(float(ratio), r["examples_per_sec"] / ref["examples_per_sec"])
        if r is not ref:
            (low, high), (want_low, want_high) = numbers(per_round), bench.round_ratios(r, ref)
            assert close(low, want_low) and close(high, want_high), r["variant"]


def test_op_table_is_the_committed_bench_run(bench_result):
    ops = {(tuple(r["shape"]), r["variant"]): r for r in bench_result["ops"]}
    rows = table_rows("forward+backward, ms")
    assert {tuple(int(n) for n in row[0].split("×")) for row in rows} == {s for s, _ in ops}
    for shape_cell, *cells in rows:
        shape = tuple(int(n) for n in shape_cell.split("×"))
        first = ops[shape, bench.OP_VARIANTS[0]]
        want = [ops[shape, v]["fwd_bwd_ms"] for v in bench.OP_VARIANTS]
        want += [first["floor_ms"], first["conv1x1_ms"]]
        for cell, value in zip(cells, want):
            if value is None:
                assert cell == "–"
            else:
                assert close(float(cell), value), (shape, cell, value)
