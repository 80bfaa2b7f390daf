"""Sweeps over settings and seeds, their record and their line in the summary."""

import json

import pytest
from test_train import synthetic_iters

from d2lbn import experiments, models, results, train


@pytest.fixture
def out(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    return tmp_path


def test_sweep_trains_each_setting_per_seed_like_train(capsys):
    train_iter, test_iter = synthetic_iters(n=240)
    settings = {"BN": (lambda: models.lenet("gluon"), 1.0),
                "none": (lambda: models.lenet(None), 0.3)}
    groups = experiments.sweep(settings, train_iter, test_iter, 1, seeds=(0, 1),
                               measure={"layers": len, "test": lambda net: train.evaluate_accuracy(
                                   net, test_iter)})
    assert list(groups) == ["BN", "none"]
    assert [[h.seed for h in runs] for runs in groups.values()] == [[0, 1], [0, 1]]
    assert [runs[0].lr for runs in groups.values()] == [1.0, 0.3]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("[d2lbn]")]
    assert len(lines) == 4 and lines[-1].startswith("[4/4] none, seed 1: loss")
    # the same run as train.train with that seed, and the two seeds differ
    again = train.train(models.lenet("gluon"), train_iter, test_iter, 1, 1.0, seed=1,
                        animate=False, hybridize=True)
    assert groups["BN"][1].loss == again.loss != groups["BN"][0].loss
    assert groups["none"][0].extra["layers"] == len(models.lenet(None))
    assert [h.extra["test"] for h in groups["BN"]] == [h.test_acc[-1] for h in groups["BN"]]
    finals = experiments.final(groups, "test_acc")
    assert finals["none"] == [h.test_acc[-1] for h in groups["none"]]


def test_sweep_needs_settings_and_seeds():
    with pytest.raises(ValueError, match="at least one"):
        experiments.sweep({}, [], [], 1)
    with pytest.raises(ValueError, match="at least one"):
        experiments.sweep({"a": (lambda: None, 1.0)}, [], [], 1, seeds=())


def _history(test_acc, lr=0.1, seed=0):
    n = len(test_acc)
    return train.History(lr=lr, batch_size=8, num_epochs=n, seed=seed, device="cpu(0)",
                         loss=[1.0] * n, train_acc=[0.5] * n, test_acc=test_acc,
                         examples_per_sec=[100.0] * n)


def test_epoch_swing():
    assert experiments.epoch_swing(_history([0.5, 0.7, 0.6, 0.6])) == pytest.approx(0.1)
    assert experiments.epoch_swing(_history([0.8])) == 0.0


def test_record_groups_and_summary(out):
    groups = {"a": [_history([0.5, 0.6], lr=0.1, seed=s) for s in (0, 1)],
              "b": [_history([0.4, 0.9], lr=3.0, seed=s) for s in (0, 1)]}
    path = experiments.record_groups("06_sweep", groups)
    entry = json.loads(path.read_text())
    assert entry["seeds"] == [0, 1] and entry["epochs"] == 2
    assert entry["groups"]["b"] == {"lr": 3.0, "loss": [1.0, 1.0], "train_acc": [0.5, 0.5],
                                    "test_acc": [0.9, 0.9], "examples_per_sec": [100.0, 100.0]}
    assert entry["runs"]["a"][1]["test_acc"] == [0.5, 0.6]
    assert experiments.load_groups("06_sweep") == groups
    with pytest.raises(FileNotFoundError, match="notebooks/07_none.ipynb"):
        experiments.load_groups("07_none")
    _, md_path = results.write_summary({"06_sweep": 3.0})
    row = [line for line in md_path.read_text().splitlines() if "06_sweep" in line][0]
    assert "| 0.1 to 3 |" in row and "2 settings" in row
    with pytest.raises(ValueError):
        experiments.record_groups("x", {})
