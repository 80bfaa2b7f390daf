"""Recorded runs, the summary files, plots and the notebook checks."""

import json

import nbformat
import pytest

from d2lbn import config, notebooks, plot, results
from d2lbn.train import History


def history(seed, acc):
    return History(lr=1.0, batch_size=256, num_epochs=2, seed=seed, device="cpu(0)",
                   loss=[0.9, 0.5], train_acc=[0.6, acc], test_acc=[0.5, acc - 0.1],
                   examples_per_sec=[1000.0, 1200.0], wall_s=3.0)


@pytest.fixture
def out(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    return tmp_path


def test_record_load_and_summary(out):
    runs = [history(0, 0.8), history(1, 0.9)]
    results.record("02_x", runs)
    assert results.load("02_x") == runs
    json_path, md_path = results.write_summary({"02_x": 12.34, "01_y": 5.0})
    entry = json.loads(json_path.read_text())["notebooks"]["02_x"]
    assert entry["seeds"] == [0, 1] and entry["train_acc"] == [0.8, 0.9]
    assert entry["wall_s"] == 12.3 and entry["epochs"] == 2 and entry["device"] == "cpu(0)"
    assert "runs" not in entry
    md = md_path.read_text()
    assert "| `02_x` | 12 s | 0, 1 | 2 | 1 | 256 | cpu(0) |" in md
    assert "0.850 ± 0.071" in md  # train acc over the two seeds
    assert "| `01_y` | 5 s |" in md


def test_quick_mode_writes_elsewhere(out, monkeypatch):
    monkeypatch.setenv(config.QUICK_ENV, "1")
    assert results.results_dir() == out / "quick"


def test_load_missing_names_the_notebook(out):
    with pytest.raises(FileNotFoundError, match="notebooks/02_x.ipynb"):
        results.load("02_x")


def test_compare_table():
    table = results.compare({"ours": [history(0, 0.8), history(1, 0.9)]},
                            book={"book": results.BOOK["02_lenet_batch_norm_scratch"]})
    assert table.loc["ours", "train_acc"] == "0.850 ± 0.071"
    assert table.loc["book", "test_acc"] == "0.816"
    assert table.loc["ours", "seeds"] == 2


def test_write_atomic_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "a.txt"
    results.write_atomic(path, "old")

    with pytest.raises(TypeError):
        results.write_atomic(path, None)  # fails mid-write
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_plots_draw():
    fig = plot.curves({"a": [history(0, 0.8)], "b": [history(1, 0.9)]})
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
    fig = plot.lines([1, 2], {"a": [[0.1, 0.2], [0.3, 0.4]]}, "x", "y", logx=True)
    assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_xscale() == "log"
    fig = plot.barh({"a": 1.0, "b": 2.0}, "ms", log=True)
    assert len(fig.axes[0].patches) == 2
    runs = {"a": [[1.0, 2.0]], "b": [[3.0, 4.0], [5.0, 6.0]]}
    fig = plot.panels([0, 10], {"m1": runs, "m2": runs, "m3": runs, "m4": runs}, "step",
                      logy=("m2",))
    assert len(fig.axes) == 6 and [len(ax.lines) for ax in fig.axes[:4]] == [3] * 4
    assert fig.axes[1].get_yscale() == "log" and not fig.axes[5].axison


def make_nb(count=None, error=False, stamped=True):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1", execution_count=count)
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"},
                                           execution_count=count)]
    if error:
        cell.outputs.append(nbformat.v4.new_output("error", ename="ValueError", evalue="x",
                                                   traceback=[]))
    nb.cells.append(cell)
    if stamped:
        notebooks.stamp(nb)
    return nb


def test_notebook_problems_and_strip(monkeypatch):
    assert notebooks.problems(make_nb()) == []
    assert "execution count 3" in notebooks.problems(make_nb(count=3))[0]
    assert "no run stamp" in notebooks.problems(make_nb(stamped=False))[0]
    assert any("ValueError" in p for p in notebooks.problems(make_nb(error=True)))
    edited = make_nb()
    edited.cells.append(nbformat.v4.new_markdown_cell("prose may change"))
    assert notebooks.problems(edited) == []
    edited.cells[0].source = "1 + 2"
    assert "changed since the last run" in notebooks.problems(edited)[0]
    nb = make_nb(count=3)
    nb.cells[0].metadata["execution"] = {"iopub.status.busy": "2026"}
    notebooks.strip(nb)
    assert "execution" not in nb.cells[0].metadata
    assert not [p for p in notebooks.problems(nb) if "count" in p]
    monkeypatch.setenv(config.QUICK_ENV, "1")
    assert "quick run" in notebooks.problems(make_nb())[0]


@pytest.mark.parametrize("path", sorted(notebooks.NOTEBOOKS.glob("*.ipynb")), ids=str)
def test_committed_notebooks_are_clean(path):
    assert notebooks.problems(nbformat.read(path, as_version=4)) == []


def tiny_notebook(path, source):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


def test_run_all_replaces_only_after_success(out, tmp_path):
    good, bad = tmp_path / "01_good.ipynb", tmp_path / "02_bad.ipynb"
    tiny_notebook(good, "print(6 * 7)")
    tiny_notebook(bad, "raise ValueError('boom')")
    before = good.read_text()
    with pytest.raises(RuntimeError, match="02_bad.ipynb failed.*nothing was replaced"):
        notebooks.run_all([good, bad])
    assert good.read_text() == before and not (out / "summary.json").exists()
    notebooks.run_all([good])
    nb = nbformat.read(good, as_version=4)
    assert nb.cells[0].outputs[0].text == "42\n" and notebooks.problems(nb) == []
    assert json.loads((out / "summary.json").read_text())["notebooks"]["01_good"]["wall_s"] >= 0


def test_numbered_copies_for_nbval(tmp_path):
    nb = make_nb()
    nb.cells.append(nbformat.v4.new_code_cell("x = 1"))  # no output: stays unnumbered
    nb.cells.append(make_nb().cells[0])
    source = tmp_path / "01_a.ipynb"
    nbformat.write(nb, source)
    [copy] = notebooks.numbered_copies(tmp_path / "copies", [source])
    cells = nbformat.read(copy, as_version=4).cells
    assert [c.execution_count for c in cells] == [1, None, 2]
    assert cells[2].outputs[0].execution_count == 2
    assert nbformat.read(source, as_version=4).cells[0].execution_count is None
