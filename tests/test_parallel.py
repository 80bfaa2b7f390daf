"""Runs in worker processes: the same results as one after another, within the token budget."""

import os
import threading

import pytest
from helpers import synthetic_iters

from d2lbn import models, train
from d2lbn.lab import parallel

# A guard against hangs, not a speed limit: spawning MXNet workers on a busy machine is slow
GUARD = 300


def settings():
    return {"BN": (lambda: models.lenet("gluon"), 1.0),
            "none": (lambda: models.lenet(None), 0.3)}


def test_sweep_trains_each_setting_per_seed_like_train(capsys):
    train_iter, test_iter = synthetic_iters(n=240)
    groups = parallel.sweep(settings(), train_iter, test_iter, 1, seeds=(0, 1), max_workers=1,
                            measure={"layers": len, "test": lambda net: train.evaluate_accuracy(
                                net, test_iter)})
    assert list(groups) == ["BN", "none"]
    assert [[h.seed for h in runs] for runs in groups.values()] == [[0, 1], [0, 1]]
    assert [runs[0].lr for runs in groups.values()] == [1.0, 0.3]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("[d2lbn]")]
    assert len(lines) == 4 and lines[-1].startswith("[4/4] none, seed 1: loss")
    # the same run as train.train with that seed, and the two seeds differ
    again = train.train(models.lenet("gluon"), train_iter, test_iter, 1, 1.0, seed=1,
                        hybridize=True)
    assert groups["BN"][1].loss == again.loss != groups["BN"][0].loss
    assert groups["none"][0].extra["layers"] == len(models.lenet(None))
    assert [h.extra["test"] for h in groups["BN"]] == [h.test_acc[-1] for h in groups["BN"]]


def test_parallel_sweep_equals_sequential(capsys):
    train_iter, test_iter = synthetic_iters(n=240)
    measure = {"w": lambda net: net[-1].weight.data().asnumpy().ravel()[:5].tolist()}
    runs = [parallel.sweep(settings(), train_iter, test_iter, 2, seeds=(0, 1, 2), measure=measure,
                           max_workers=workers) for workers in (1, 2)]
    for seq, par in zip(*(r.values() for r in runs)):
        for a, b in zip(seq, par):
            assert (a.seed, a.loss, a.train_acc, a.test_acc) == (b.seed, b.loss, b.train_acc,
                                                                 b.test_acc)
            assert a.extra == b.extra
    out = capsys.readouterr().out
    assert out.count("[12/12]") == 0 and out.count("[6/6]") == 2


def test_repeat_is_a_one_setting_sweep(capsys):
    train_iter, test_iter = synthetic_iters(n=120)
    runs = parallel.repeat(lambda: models.lenet(None), train_iter, test_iter, 1, 0.3,
                           seeds=(3, 4), max_workers=2)
    assert [h.seed for h in runs] == [3, 4]
    assert "[2/2] seed " in capsys.readouterr().out


def test_sweep_needs_settings_and_seeds():
    with pytest.raises(ValueError, match="at least one"):
        parallel.sweep({}, [], [], 1)
    with pytest.raises(ValueError, match="at least one"):
        parallel.sweep({"a": (lambda: None, 1.0)}, [], [], 1, seeds=())


def test_a_failing_task_names_its_error():
    def boom():
        raise ValueError("bad setting")

    with pytest.raises(RuntimeError, match="(?s)task 1 failed.*ValueError: bad setting"):
        parallel.run_all([lambda: 1, boom, lambda: 3], max_workers=2)


def finished(fn):
    """What ``fn()`` returned or raised, in a thread; ``GUARD`` s without either fails the test."""
    outcome = []

    def call():
        try:
            outcome.append(fn())
        except BaseException as e:  # handed to the test
            outcome.append(e)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(GUARD)
    assert outcome, f"still waiting after {GUARD} s"
    return outcome[0]


def test_a_worker_that_dies_fails_the_run_instead_of_hanging():
    error = finished(lambda: parallel.run_all([lambda: os._exit(3), lambda: 2], max_workers=2))
    assert isinstance(error, RuntimeError) and "without their results" in str(error)


def test_jobs_from_the_environment(monkeypatch):
    monkeypatch.setenv(parallel.JOBS_ENV, "3")
    assert parallel.jobs() == 3
    monkeypatch.setenv(parallel.JOBS_ENV, "0")
    with pytest.raises(ValueError, match="positive"):
        parallel.jobs()


def test_jobserver_tokens(tmp_path):
    server = parallel.JobServer.create(str(tmp_path / "fifo"), 2)
    assert server.try_acquire() and server.try_acquire() and not server.try_acquire()
    server.release()
    assert server.try_acquire() and not server.try_acquire()
    server.close()


def test_workers_stay_within_the_budget(tmp_path, monkeypatch):
    # This process holds the run's only token; it lends it to its workers. A task runs
    # only while its worker holds a token, so while one runs the pipe has none to spare:
    # with two workers the tasks still run one at a time
    server = parallel.JobServer.create(str(tmp_path / "fifo"), 0)
    monkeypatch.setenv(parallel.JOBSERVER_ENV, server.path)

    def task():
        pipe = parallel.JobServer(os.environ[parallel.JOBSERVER_ENV], blocking=False)
        spare = pipe.try_acquire()
        if spare:
            pipe.release()
        pipe.close()
        return spare

    assert finished(lambda: parallel.run_all([task] * 4, max_workers=2)) == [False] * 4
    assert not server.try_acquire()  # the lent token came back to this process
    server.close()


def test_environ_sets_unsets_and_restores(monkeypatch):
    monkeypatch.setenv("D2LBN_TEST_A", "kept")
    monkeypatch.delenv("D2LBN_TEST_B", raising=False)
    with parallel.environ(D2LBN_TEST_A=None, D2LBN_TEST_B="set"):
        assert "D2LBN_TEST_A" not in os.environ and os.environ["D2LBN_TEST_B"] == "set"
    assert os.environ["D2LBN_TEST_A"] == "kept" and "D2LBN_TEST_B" not in os.environ
