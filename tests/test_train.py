"""The training loop on a small synthetic image set the test builds."""

import mxnet as mx
import numpy as onp
import pytest
from helpers import synthetic_iters

from d2lbn import models, train
from d2lbn.lab import mode


@pytest.mark.parametrize("norm", ["scratch", "gluon"])
def test_two_epochs_learn_and_repeat(norm):
    train_iter, test_iter = synthetic_iters()
    runs = [train.train(models.lenet(norm), train_iter, test_iter, 2, 1.0, seed=3,
                        animate=False) for _ in range(2)]
    assert runs[0].test_acc[-1] > 0.9
    assert runs[0].loss[-1] < runs[0].loss[0]
    for key in ("loss", "train_acc", "test_acc"):
        assert getattr(runs[0], key) == getattr(runs[1], key)
    assert (runs[0].num_epochs, runs[0].batch_size, runs[0].device) == (2, 32, "cpu(0)")


def test_other_seed_gives_other_history():
    train_iter, test_iter = synthetic_iters()
    a, b = (train.train(models.lenet("gluon"), train_iter, test_iter, 1, 1.0, seed=s,
                        animate=False) for s in (1, 2))
    assert a.loss != b.loss


def test_train_runs_the_epochs_it_is_given_in_any_mode(monkeypatch, capsys):
    monkeypatch.setenv(mode.QUICK_ENV, "1")
    train_iter, test_iter = synthetic_iters(n=120)
    h = train.train(models.lenet(None), train_iter, test_iter, 3, 0.5, animate=False)
    assert h.num_epochs == 3 == len(h.loss) > mode.QUICK_EPOCHS
    assert "quick mode" not in capsys.readouterr().out


def test_evaluate_accuracy_of_perfect_and_constant_nets():
    _, test_iter = synthetic_iters()
    net = models.lenet(None)
    net.initialize()
    acc = train.evaluate_accuracy(net, test_iter)
    labels = onp.concatenate([y.asnumpy() for _, y in test_iter])
    predicted = onp.concatenate([net(X).asnumpy().argmax(axis=1) for X, _ in test_iter])
    assert acc == pytest.approx((labels == predicted).mean())


def test_bad_arguments():
    train_iter, test_iter = synthetic_iters(n=60)
    with pytest.raises(ValueError, match="lr"):
        train.train(models.lenet(), train_iter, test_iter, 1, 0.0)
    with pytest.raises(ValueError, match="num_epochs"):
        train.train(models.lenet(), train_iter, test_iter, 0, 1.0)


def test_acc_after_steps_improves_at_each_checkpoint(monkeypatch):
    train_iter, test_iter = synthetic_iters()
    train.seed_all(0)
    net = models.lenet("gluon")
    net.initialize(mx.init.Xavier())
    accs = train.test_acc_after_steps(net, train_iter, test_iter, 1.0, [1, 40])
    assert len(accs) == 2 and accs[1] > 0.9 > accs[0]  # 40 steps cycle over the 16 batches
    monkeypatch.setenv(mode.QUICK_ENV, "1")
    assert len(train.test_acc_after_steps(net, train_iter, test_iter, 1.0, [4, 30, 40])) == 3
    with pytest.raises(ValueError, match="checkpoints"):
        train.test_acc_after_steps(net, train_iter, test_iter, 1.0, [0, 4])


def test_step_batches_cycles_and_stops():
    data = [(mx.np.full((2, 1), i), mx.np.array([i, i])) for i in range(3)]
    got = [int(X[0, 0]) for X, _ in train.step_batches(data, 7, mx.cpu())]
    assert got == [0, 1, 2, 0, 1, 2, 0]
    assert list(train.step_batches(data, 0, mx.cpu())) == []
    with pytest.raises(ValueError, match="no batches"):
        list(train.step_batches([], 1, mx.cpu()))
