"""Recorded runs, the summary files, plots and the notebook checks."""

import json

import pytest

from d2lbn import config, results
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

