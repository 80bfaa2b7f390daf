"""The notebook runner: checks on committed notebooks, parallel runs, order, bad input."""

import json
from pathlib import Path

import mxnet
import nbformat
import pytest
from helpers import write_notebook

from d2lbn.__main__ import main
from d2lbn.lab import floatpath, mode, records, runner


@pytest.fixture
def out(tmp_path, monkeypatch):
    monkeypatch.setenv(records.RESULTS_ENV, str(tmp_path / "results"))
    return tmp_path / "results"


def make_nb(count=1, error=False, stamped=True):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1", execution_count=count)
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"},
                                           execution_count=count)]
    if error:
        cell.outputs.append(nbformat.v4.new_output("error", ename="ValueError", evalue="x",
                                                   traceback=[]))
    nb.cells.append(cell)
    if stamped:
        runner.stamp(nb)
    return nb


def test_notebook_problems_and_strip(monkeypatch):
    assert runner.problems(make_nb()) == []
    assert "execution count 3, not 1" in runner.problems(make_nb(count=3))[0]
    assert "execution count None" in runner.problems(make_nb(count=None))[0]
    assert "no run stamp" in runner.problems(make_nb(stamped=False))[0]
    assert any("ValueError" in p for p in runner.problems(make_nb(error=True)))
    edited = make_nb()
    edited.cells.append(nbformat.v4.new_markdown_cell("prose may change"))
    assert runner.problems(edited) == []
    edited.cells[0].source = "1 + 2"
    assert "changed since the last run" in runner.problems(edited)[0]
    nb = make_nb()
    nb.cells[0].metadata["execution"] = {"iopub.status.busy": "2026"}
    runner.strip(nb)
    assert "execution" not in nb.cells[0].metadata and nb.cells[0].execution_count == 1
    monkeypatch.setenv(mode.QUICK_ENV, "1")
    assert "quick run" in runner.problems(make_nb())[0]


@pytest.mark.parametrize("path", runner.notebooks(), ids=lambda p: p.stem[:2])
def test_committed_notebooks_are_clean(path):
    assert runner.problems(nbformat.read(path, as_version=4)) == []


@pytest.mark.parametrize("path", runner.notebooks(), ids=lambda p: p.stem[:2])
def test_nbval_ignores_an_output_only_for_a_reason(path):
    assert runner.unexplained_ignores(nbformat.read(path, as_version=4)) == []


@pytest.mark.parametrize("path", runner.notebooks(), ids=lambda p: p.stem[:2])
def test_nbval_compares_some_output_of_every_notebook(path):
    assert runner.compared_outputs(nbformat.read(path, as_version=4)) >= 1


def test_compared_outputs_counts_cells_with_output_not_ignored():
    nb = make_nb()
    nb.cells = [nbformat.v4.new_code_cell("1", outputs=[nbformat.v4.new_output(
        "execute_result", data={"text/plain": "1"}, execution_count=1)]) for _ in range(3)]
    nb.cells[1].metadata["tags"] = [runner.IGNORE, "varies-timing"]
    nb.cells[2].outputs = []
    assert runner.compared_outputs(nb) == 1


def test_unexplained_ignores_are_found():
    nb = make_nb()
    assert runner.unexplained_ignores(nb) == []
    nb.cells[0].metadata["tags"] = [runner.IGNORE]
    assert runner.unexplained_ignores(nb) == [
        f"code cell 1: ignored by nbval without one of {sorted(runner.IGNORE_REASONS)}"]
    nb.cells[0].metadata["tags"].append("varies-timing")
    assert runner.unexplained_ignores(nb) == []


def test_run_all_replaces_only_after_success(out, tmp_path):
    good = write_notebook(tmp_path / "01_good.ipynb", "print(6 * 7)")
    bad = write_notebook(tmp_path / "02_bad.ipynb", "raise ValueError('boom')")
    before = good.read_text()
    with pytest.raises(RuntimeError, match=r"02_bad.ipynb .*Nothing was replaced") as err:
        runner.run_all([good, bad], jobs=2)
    assert good.read_text() == before and not (out / "summary.json").exists()
    staging = Path(str(err.value).rsplit(" ", 1)[1])
    assert sorted(p.name for p in staging.glob("*.ipynb")) == ["01_good.ipynb", "02_bad.ipynb"]
    wall = runner.run_all([good], jobs=1)
    nb = nbformat.read(good, as_version=4)
    assert nb.cells[0].outputs[0].text == "42\n" and runner.problems(nb) == []
    # the summary records the run's own measurement (a kernel takes a while to start)
    assert wall["01_good"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["notebooks"]["01_good"]["wall_s"] == round(wall["01_good"], 1)


BUSY = """
import subprocess, sys
spin = "import time\\nwhile time.process_time() < 1.5: pass"
subprocess.run([sys.executable, "-c", spin], check=True)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_cpu_time_counts_the_processes_a_notebook_waited_for(out, tmp_path):
    busy = write_notebook(tmp_path / "01_busy.ipynb", BUSY)
    _, wall, cpu = runner.execute(busy)
    # the child's 1.5 s beside the kernel's own (an idle kernel's whole life is well under 1 s)
    assert cpu >= 1.5
    runner.run_all([busy], jobs=1)
    assert json.loads((out / "summary.json").read_text())["notebooks"]["01_busy"]["cpu_s"] >= 1.5


def test_cpu_s_reads_proc_stat_fields_14_to_17(tmp_path, monkeypatch):
    stat = "42 (a (b) c) S " + " ".join(str(v) for v in range(4, 14)) + " 100 20 3 4 5 6"
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: stat if str(self) ==
                        "/proc/42/stat" else real(self, *a, **k))
    monkeypatch.setattr(runner.os, "sysconf", lambda name: 100)
    assert runner.cpu_s(42) == pytest.approx((100 + 20 + 3 + 4) / 100)


TRAIN = """
from mxnet import np
from d2lbn import lab, models, train
train.seed_all({seed})
X, y = np.random.uniform(size=(64, 1, 28, 28)), np.random.randint(0, 10, size=(64,))
data = [(X[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
runs = lab.repeat(lambda: models.lenet("gluon"), data, data, 2, 0.5, seeds=(0, 1))
lab.record("{stem}", runs);
"""


def test_parallel_run_equals_sequential(out, tmp_path):
    first = write_notebook(tmp_path / "01_a.ipynb", TRAIN.format(seed=0, stem="01_a"))
    second = write_notebook(tmp_path / "02_b.ipynb", TRAIN.format(seed=1, stem="02_b"))
    figures = []
    for jobs in (1, 2):
        runner.run_all([first, second], jobs=jobs)
        entries = [json.loads((out / "runs" / f"{s}.json").read_text()) for s in ("01_a", "02_b")]
        for entry in entries:
            for run in entry["runs"]:
                run.pop("examples_per_sec"), run.pop("wall_s")
            entry.pop("examples_per_sec")
        figures.append(entries)
    assert figures[0] == figures[1]
    assert figures[0][0]["runs"][0]["loss"] != figures[0][1]["runs"][0]["loss"]


def test_a_run_writes_back_only_its_own_records(out, tmp_path):
    other = out / "runs" / "09_other.json"
    other.parent.mkdir(parents=True)
    other.write_text("before the run")
    # While this run is under way, another one finishes and writes 09's record
    nb = write_notebook(tmp_path / "01_a.ipynb", TRAIN.format(seed=0, stem="01_a"),
                        f"open({str(other)!r}, 'w').write('written meanwhile')")
    runner.run_all([nb], jobs=1)
    assert other.read_text() == "written meanwhile"
    assert json.loads((out / "runs" / "01_a.json").read_text())["seeds"] == [0, 1]
    assert floatpath.read(out, "01_a")["mxnet"] == mxnet.__version__  # its outputs' float path
    assert floatpath.read(out, "09_other") is None  # not run here


def test_notebooks_start_in_schedule_order(out, tmp_path, capsys):
    paths = [write_notebook(tmp_path / f"0{i}_n.ipynb", "1") for i in range(1, 5)]
    runner.run_all(paths, jobs=1)
    log = capsys.readouterr().out
    starts = [log.index(f"started 0{i}_n") for i in range(1, 5)]
    assert starts == sorted(starts)  # no recorded times: the order given


def test_schedule_runs_the_longest_first(tmp_path):
    a, b, c = (write_notebook(tmp_path / f"0{i}_n.ipynb", "1") for i in (1, 2, 3))
    wall = {"01_n": 10.0, "02_n": 30.0, "03_n": 25.0}
    assert [p.stem for p in runner.schedule([a, b, c], wall)] == ["02_n", "03_n", "01_n"]


def test_estimate_left():
    wall = {"a": 100.0, "b": 60.0, "c": 30.0, "d": 30.0}
    # a has 40 s left; b takes the free slot (60 s); c follows a (40 + 30), d follows b
    assert runner.estimate_left({"a": 60.0}, ["b", "c", "d"], wall, jobs=2) == 90.0
    assert runner.estimate_left({}, [], wall, jobs=2) == 0.0


def test_resolve_by_number_name_or_path():
    first = runner.notebooks()[0]
    assert runner.resolve(["01"]) == [first]
    assert runner.resolve([first.stem, str(first)]) == [first, first]
    with pytest.raises(ValueError, match="no such notebook: 99, nope"):
        runner.resolve(["99", "nope"])


@pytest.mark.parametrize("argv, message", [(["run", "--jobs", "0"], "--jobs/-j: must be at least"),
                                           (["run", "01", "99"], "no such notebook: 99")])
def test_cli_rejects_bad_input_before_running(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(runner, "run_all", lambda *a: pytest.fail("ran"))
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
