"""Recorded runs (one setting or a sweep), their tables, the summary files and the plots."""

import json
import re
from pathlib import Path

import nbformat
import pytest

from d2lbn.lab import mode, parallel, plot, records
from d2lbn.train import History


def history(seed, acc):
    return History(lr=1.0, batch_size=256, num_epochs=2, seed=seed, device="cpu(0)",
                   loss=[0.9, 0.5], train_acc=[0.6, acc], test_acc=[0.5, acc - 0.1],
                   examples_per_sec=[1000.0, 1200.0], wall_s=3.0)


@pytest.fixture
def out(tmp_path, monkeypatch):
    monkeypatch.setenv(records.RESULTS_ENV, str(tmp_path))
    return tmp_path


def test_record_load_and_summary(out):
    runs = [history(0, 0.8), history(1, 0.9)]
    records.record("02_x", runs)
    assert records.load("02_x", out) == runs
    json_path, md_path = records.write_summary({"02_x": 12.34, "01_y": 5.0},
                                               cpu_s={"02_x": 1500.0})
    entry = json.loads(json_path.read_text())["notebooks"]["02_x"]
    assert entry["seeds"] == [0, 1] and entry["train_acc"] == [0.8, 0.9]
    assert entry["wall_s"] == 12.3 and entry["epochs"] == 2 and entry["device"] == "cpu(0)"
    assert entry["cpu_s"] == 1500.0 and "cpu_s" not in json.loads(json_path.read_text())[
        "notebooks"]["01_y"]
    assert "runs" not in entry
    md = md_path.read_text()
    assert "| `02_x` | 12 s | 25 min | 0, 1 | 2 | 1 | 256 | cpu(0) |" in md
    assert "0.850 ± 0.071" in md  # train acc over the two seeds
    assert "| `01_y` | 5 s | – |" in md
    assert "CPU time recorded for 1 of 2 notebooks: 25 core-minutes in all." in md
    _, md_path = records.write_summary({}, run={"notebooks": 2, "jobs": 2, "wall_s": 600,
                                                "cpu_s": 1080})
    md = md_path.read_text()
    assert "run, of 2 notebooks, took 10 min with 2 processes at a time (0 min" in md
    assert "in all, 18 core-minutes)." in md
    # a later partial run without a CPU figure keeps the one recorded before
    assert "| `02_x` | 12 s | 25 min |" in md
    records.write_summary({"01_y": 6.0})  # a partial run keeps the whole run's figure
    assert json.loads(json_path.read_text())["run"]["wall_s"] == 600


def test_quick_mode_writes_elsewhere(out, monkeypatch):
    monkeypatch.setenv(mode.QUICK_ENV, "1")
    assert records.results_dir() == out / "quick"


def test_load_missing_names_the_notebook(out):
    with pytest.raises(FileNotFoundError, match="notebooks/02_x.ipynb"):
        records.load("02_x", out)


def test_load_reads_the_committed_record_in_any_mode(out, monkeypatch):
    monkeypatch.setenv(mode.QUICK_ENV, "1")
    committed = records.load("02_lenet_batch_norm_scratch")
    assert [h.seed for h in committed] == [0, 1, 2, 3] and committed[0].num_epochs == 10


def test_compare_table():
    table = records.compare({"ours": [history(0, 0.8), history(1, 0.9)]},
                            book={"book": records.BOOK["02_lenet_batch_norm_scratch"]})
    assert table.loc["ours", "train_acc"] == "0.850 ± 0.071"
    assert table.loc["book", "test_acc"] == "0.816"
    assert table.loc["ours", "seeds"] == 2


def test_write_atomic_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "a.txt"
    records.write_atomic(path, "old")

    with pytest.raises(TypeError):
        records.write_atomic(path, None)  # fails mid-write
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


def test_record_groups_and_summary(out):
    groups = {"a": [history(s, 0.6) for s in (0, 1)],
              "b": [History(**{**history(s, 0.9).__dict__, "lr": 3.0}) for s in (0, 1)]}
    path = records.record("06_sweep", groups)
    entry = json.loads(path.read_text())
    assert entry["seeds"] == [0, 1] and entry["epochs"] == 2
    assert entry["groups"]["b"] == {"lr": 3.0, "loss": [0.5, 0.5], "train_acc": [0.9, 0.9],
                                    "test_acc": pytest.approx([0.8, 0.8]),
                                    "examples_per_sec": [1200.0, 1200.0]}
    assert entry["runs"]["a"][1]["test_acc"] == pytest.approx([0.5, 0.5])
    assert records.load("06_sweep", out) == groups
    with pytest.raises(FileNotFoundError, match="notebooks/07_none.ipynb"):
        records.load("07_none", out)
    _, md_path = records.write_summary({"06_sweep": 3.0})
    row = [line for line in md_path.read_text().splitlines() if "06_sweep" in line][0]
    assert "| 1 to 3 |" in row and "2 settings" in row
    with pytest.raises(ValueError):
        records.record("x", {})
    with pytest.raises(ValueError):
        records.record("x", {"a": []})


def test_final_and_epoch_swing():
    runs = [History(**{**history(0, 0.8).__dict__, "test_acc": [0.5, 0.7, 0.6, 0.6]}),
            history(1, 0.9)]
    assert records.epoch_swing(runs[0]) == pytest.approx(0.1)
    assert records.epoch_swing(History(**{**runs[0].__dict__, "test_acc": [0.8]})) == 0.0
    assert records.final({"x": runs}, "test_acc") == {"x": [0.6, pytest.approx(0.8)]}


# -- the committed records against the notebooks that wrote them --------------------------------

ROOT = Path(__file__).resolve().parents[1]
# A run's printed figures: lab.sweep's "[i/n] name, seed s: loss ..." and History.summary()
RUN_LINE = re.compile(r"(?:\[\d+/\d+\] (?:(?P<name>.+), )?seed (?P<seed>\d+): )?"
                      r"loss (?P<loss>[\d.naif]+), train acc (?P<train_acc>[\d.naif]+), "
                      r"test acc (?P<test_acc>[\d.naif]+)")
# Runs a notebook prints but keeps no history of, by printed name: notebook 10's screen for a
# learning rate; notebook 02's nets without BN (it records the scratch net alone, which notebook
# 03 pairs with; the no-BN seed 0 is printed by lab.repeat with no name)
UNRECORDED = {"10_exercise_dropout_vs_bn": re.compile(r", lr [\d.]+$"),
              "02_lenet_batch_norm_scratch": re.compile(r"^(no BN)?$")}


def printed_runs(nb) -> list[dict]:
    """Every run whose final figures a notebook's outputs print, with its name and seed if given."""
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.outputs)
    return [{**m.groupdict(), "seed": None if m["seed"] is None else int(m["seed"])}
            for m in RUN_LINE.finditer(text)]


def recorded_runs(path: Path) -> list[dict]:
    """Each run of a record: its setting's name, seed and final figures."""
    runs = json.loads(path.read_text())["runs"]
    groups = runs if isinstance(runs, dict) else {"": runs}
    return [{"name": name, "seed": h["seed"], **{m: h[m][-1] for m in METRICS}}
            for name, group in groups.items() for h in group]


def names(line: dict, run: dict, skip) -> bool:
    """Whether a printed line names a recorded run: the same seed and setting. A one-setting
    record (name '') takes any printed name its notebook does not list as unrecorded."""
    name = line["name"] or ""
    return line["seed"] == run["seed"] and (
        name == run["name"] or (run["name"] == "" and not (skip and skip.search(name))))


def shows(line: dict, run: dict) -> bool:
    # Printed with 3 decimals; a float32 figure on a tie may round either way
    return all(abs(float(line[m]) - run[m]) <= 0.00051 for m in METRICS)


METRICS = ("loss", "train_acc", "test_acc")
RECORDED = sorted({p.stem.split("_")[0] for p in (ROOT / "results" / "runs").glob("*.json")})


@pytest.mark.parametrize("number", RECORDED)
def test_every_record_holds_the_runs_its_notebook_printed(number):
    [notebook] = (ROOT / "notebooks").glob(f"{number}_*.ipynb")
    lines = printed_runs(nbformat.read(notebook, as_version=4))
    paths = sorted((ROOT / "results" / "runs").glob(f"{notebook.stem}*.json"))
    assert paths, f"no record is named after {notebook.name}"
    recorded = [run for path in paths for run in recorded_runs(path)]
    skip = UNRECORDED.get(notebook.stem)
    unseeded = [ln for ln in lines if ln["seed"] is None]  # History.summary(): the kernel's run
    for run in recorded:  # each recorded run is one the notebook printed
        candidates = [ln for ln in lines if names(ln, run, skip)] + unseeded
        assert any(shows(ln, run) for ln in candidates), (notebook.stem, run)
    for ln in lines:  # and each run it printed by name and seed is recorded
        if ln["seed"] is None or (skip and skip.search(ln["name"] or "")):
            continue
        assert any(names(ln, run, skip) and shows(ln, run) for run in recorded), (notebook.stem, ln)


def test_run_line_is_what_the_record_check_reads():
    """A line of lab.run_line (what lab.sweep prints) parses back to its name, seed, figures."""
    run = History(**{**history(3, 0.8765).__dict__, "loss": [0.9, 0.4321]})
    line = parallel.run_line(2, 5, "BN per worker, 4 per worker", run)
    assert line.startswith("[2/5] BN per worker, 4 per worker, seed 3: ") and line.endswith("(3 s)")
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=line + "\n")]
    nb.cells = [cell]
    [parsed] = printed_runs(nb)
    assert (parsed["name"], parsed["seed"]) == ("BN per worker, 4 per worker", 3)
    want = {"loss": 0.4321, "train_acc": 0.8765, "test_acc": 0.7765}
    assert shows(parsed, want) and not shows(parsed, {**want, "loss": 0.4331})
    assert parallel.run_line(1, 1, "", run).startswith("[1/1] seed 3: loss 0.432")
