"""The training loop on a small synthetic image set the test builds."""

import mxnet as mx
import numpy as onp
import pytest
from helpers import synthetic_iters

from d2lbn import models, train
from d2lbn.lab import mode
from d2lbn.scale import sync

DEVICES = [mx.cpu(0), mx.cpu(1)]  # two CPU contexts stand in for two GPUs


@pytest.mark.parametrize("norm", ["scratch", "gluon"])
def test_two_epochs_learn_and_repeat(norm):
    train_iter, test_iter = synthetic_iters()
    runs = [train.train(models.lenet(norm), train_iter, test_iter, 2, 1.0, seed=3)
            for _ in range(2)]
    assert runs[0].test_acc[-1] > 0.9
    assert runs[0].loss[-1] < runs[0].loss[0]
    for key in ("loss", "train_acc", "test_acc"):
        assert getattr(runs[0], key) == getattr(runs[1], key)
    assert (runs[0].num_epochs, runs[0].batch_size, runs[0].device) == (2, 32, "cpu(0)")


def test_batch_size_of_reads_a_data_loader_and_knows_when_it_cannot():
    train_iter, _ = synthetic_iters()
    assert train.batch_size_of(train_iter) == 32
    assert train.batch_size_of(list(train_iter)) == 0


def test_other_seed_gives_other_history():
    train_iter, test_iter = synthetic_iters()
    a, b = (train.train(models.lenet("gluon"), train_iter, test_iter, 1, 1.0, seed=s)
            for s in (1, 2))
    assert a.loss != b.loss


def test_train_runs_the_epochs_it_is_given_in_any_mode(monkeypatch, capsys):
    monkeypatch.setenv(mode.QUICK_ENV, "1")
    train_iter, test_iter = synthetic_iters(n=120)
    h = train.train(models.lenet(None), train_iter, test_iter, 3, 0.5)
    assert h.num_epochs == 3 == len(h.loss) > mode.QUICK_EPOCHS
    assert "quick mode" not in capsys.readouterr().out


def reference_history(net, train_iter, test_iter, num_epochs, lr, hybridize):
    """The loop as it was: ``hybridize()`` alone, and every batch's figures read at once."""
    train.seed_all(3)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu(), force_reinit=True)
    if hybridize:
        net.hybridize()
    trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
    loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    history = []
    for _ in range(num_epochs):
        loss_sum, correct, n = 0.0, 0.0, 0
        for X, y in train_iter:
            l, y_hat = train.sgd_step(net, trainer, loss, X, y)
            loss_sum += float(l.sum())
            correct += float((y_hat.argmax(axis=1).astype(y.dtype) == y).sum())
            n += X.shape[0]
        right = sum(float((net(X).argmax(axis=1).astype(y.dtype) == y).sum())
                    for X, y in test_iter)
        history.append((loss_sum / n, correct / n, right / len(test_iter._dataset)))
    return history


@pytest.mark.parametrize("norm, hybridize", [("scratch", False), ("hybrid", True),
                                             ("gluon", True)])
def test_the_loop_keeps_the_numbers_of_reading_every_batch(norm, hybridize, capsys):
    # Sums on the device in float64 add the same float32 batch sums in the same order as
    # Python did, and static memory changes where arrays live, not what is computed,
    # so the figures are equal, not merely close
    # 166 examples to train on: a last batch of 6 changes the shapes
    train_iter, test_iter = synthetic_iters(n=200)
    h = train.train(models.lenet(norm), train_iter, test_iter, 2, 1.0, mx.cpu(), 3, hybridize)
    want = reference_history(models.lenet(norm), train_iter, test_iter, 2, 1.0, hybridize)
    assert list(zip(h.loss, h.train_acc, h.test_acc)) == want
    assert capsys.readouterr().out.count("epoch ") == 2  # a line per epoch outside a notebook


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


# -- several devices in one process ---------------------------------------------------------------

def parameters(net):
    return [p.data().asnumpy() for p in net.collect_params().values()]


@pytest.mark.parametrize("norm", ["scratch", "gluon"])
def test_a_one_device_list_trains_exactly_as_that_device(norm):
    train_iter, test_iter = synthetic_iters(n=240)
    nets = [models.lenet(norm), models.lenet(norm)]
    a = train.train(nets[0], train_iter, test_iter, 2, 1.0, device=mx.cpu(), seed=3)
    b = train.train(nets[1], train_iter, test_iter, 2, 1.0, device=[mx.cpu()], seed=3)
    for key in ("lr", "batch_size", "num_epochs", "seed", "device", "loss", "train_acc",
                "test_acc"):
        assert getattr(a, key) == getattr(b, key)
    for x, y in zip(parameters(nets[0]), parameters(nets[1])):
        onp.testing.assert_array_equal(x, y)


def steps_on(devices, norm, shard=False, n=3):
    """``train.sgd_steps`` of a fresh LeNet on ``n`` fixed batches of 32: losses, parameters."""
    train_iter, _ = synthetic_iters()
    batches = list(mx.gluon.data.DataLoader(train_iter._dataset, 32))[:n]
    train.seed_all(0)
    net = sync.sharded(models.lenet(norm)) if shard else models.lenet(norm)
    net.initialize(mx.init.Xavier(), ctx=devices)
    return train.sgd_steps(net, batches, 0.9, devices=devices), parameters(net)


@pytest.mark.parametrize("norm, shard", [(None, False), ("scratch", True)],
                         ids=["no BN", "synchronized BN"])
def test_two_devices_step_like_one_device_on_the_whole_batch(norm, shard):
    (losses, params), (want_losses, want_params) = (steps_on(DEVICES, norm, shard),
                                                    steps_on([mx.cpu()], norm))
    onp.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    for got, want in zip(params, want_params):
        onp.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bn_per_device_is_not_bn_of_the_whole_batch():
    per_device, whole = steps_on(DEVICES, "scratch")[0], steps_on([mx.cpu()], "scratch")[0]
    assert onp.abs(onp.subtract(per_device, whole)).max() > 1e-2


def test_train_on_two_devices_learns_and_names_them():
    train_iter, test_iter = synthetic_iters()
    for net in (models.lenet("gluon"), sync.sharded(models.lenet("scratch"))):
        h = train.train(net, train_iter, test_iter, 2, 1.0, device=DEVICES, seed=3)
        assert h.device == "cpu(0), cpu(1)" and h.batch_size == 32
        assert h.test_acc[-1] > 0.9
        for p in net.collect_params().values():
            assert p.list_ctx() == DEVICES


def test_bad_devices():
    train_iter, test_iter = synthetic_iters(n=60)
    for kwargs, match in [({"device": []}, "non-empty"),
                          ({"device": [mx.cpu(0), mx.cpu(0)]}, "distinct")]:
        with pytest.raises(ValueError, match=match):
            train.train(models.lenet(), train_iter, test_iter, 1, 1.0, **kwargs)
