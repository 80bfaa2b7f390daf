"""Santurkar et al.'s measurements, on linear nets where they are exact, and on LeNet."""

import json

import mxnet as mx
import numpy as onp
import pytest
from helpers import synthetic_iters
from mxnet import autograd, gluon, np
from mxnet.gluon import nn

from d2lbn import models, train
from d2lbn.analysis import landscape
from d2lbn.lab import mode

L2 = gluon.loss.L2Loss()  # per example: the mean over outputs of 0.5 * (prediction - label)^2


def linear_chain(widths, d=3, n=16, use_bias=True, seed=1):
    """Dense layers of the given widths on ``d`` inputs, random weights and biases, and data."""
    rng = onp.random.default_rng(seed)
    net = nn.HybridSequential()
    for w_in, w_out in zip([d] + list(widths), widths):
        net.add(nn.Dense(w_out, in_units=w_in, use_bias=use_bias))
    net.initialize(mx.init.Normal(0.5))
    for layer in net if use_bias else []:
        layer.bias.set_data(np.array(rng.normal(size=layer.bias.shape), dtype="float32"))
    X = rng.normal(size=(n, d)).astype("float32")
    y = rng.normal(size=(n, widths[-1])).astype("float32")
    return net, np.array(X), np.array(y)


def chain_params(net):
    """``[(W, b), ...]`` of a linear chain with biases, in float64."""
    return [(layer.weight.data().asnumpy().astype(float), layer.bias.data().asnumpy().astype(float))
            for layer in net]


def chain_grads(params, X, y):
    """Hand backpropagation of the batch mean of ``L2`` (a mean over outputs) through a chain."""
    hs = [X]
    for W, b in params:
        hs.append(hs[-1] @ W.T + b)
    d = (hs[-1] - y) / y.size
    grads = []
    for (W, _), h in zip(params[::-1], hs[-2::-1]):
        grads.append((d.T @ h, d.sum(axis=0)))
        d = d @ W
    return grads[::-1]


def flat(pairs):
    return onp.concatenate([a.ravel() for pair in pairs for a in pair])


def all_arrays(net):
    """Every parameter array of ``net``, then every gradient, as NumPy copies."""
    params = net.collect_params().values()
    return ([p.data().asnumpy().copy() for p in params]
            + [p.grad().asnumpy().copy() for p in params if p.grad_req != "null"])


@pytest.mark.parametrize("use_bias", [False, True])
def test_loss_landscape_of_least_squares_is_the_exact_quadratic(use_bias):
    net, X, y = linear_chain([1], d=4, n=20, use_bias=use_bias)
    lr, scales = 0.1, (0.5, 1, 2, 4)
    got = landscape.loss_landscape(net, L2, X, y, lr, scales)
    # Least squares: L(w - eta g) = L - eta g.g + eta^2 g.Hg / 2, and the gradient
    # there differs by eta H g, with H = A^T A / n (A: X with a column of ones for the bias)
    A, Y = X.asnumpy().astype(float), y.asnumpy().astype(float)
    w = net[0].weight.data().asnumpy().astype(float).ravel()
    if use_bias:
        A, w = onp.hstack([A, onp.ones((len(A), 1))]), onp.append(w, net[0].bias.data().item())
    r = A @ w - Y.ravel()
    g, H = A.T @ r / len(A), A.T @ A / len(A)
    etas = lr * onp.array(scales)
    loss0 = 0.5 * (r ** 2).mean()
    losses = loss0 - etas * (g @ g) + 0.5 * etas ** 2 * (g @ H @ g)
    assert got["eta"] == pytest.approx(etas.tolist())
    assert got["loss0"] == pytest.approx(loss0, rel=1e-5)
    assert got["loss"] == pytest.approx(losses.tolist(), rel=1e-5)
    assert got["grad_norm"] == pytest.approx(onp.linalg.norm(g), rel=1e-5)
    assert got["grad_change"] == pytest.approx((etas * onp.linalg.norm(H @ g)).tolist(),
                                               rel=1e-4)
    assert got["loss_range"] == pytest.approx(losses.max() - losses.min(), rel=1e-4)
    assert (got["loss_min"], got["loss_max"]) == pytest.approx((losses.min(), losses.max()),
                                                               rel=1e-5)
    # A quadratic is exactly ||H g|| / ||g||-smooth along g, at every step size
    assert got["beta"] == pytest.approx(onp.linalg.norm(H @ g) / onp.linalg.norm(g), rel=1e-4)


@pytest.mark.parametrize("layer_index", [1, 2, -1])
def test_gradient_ics_of_linear_chain_matches_hand_computation(layer_index):
    net, X, y = linear_chain([5, 4, 2])
    lr = 0.3
    params = chain_params(net)
    Xn, yn = X.asnumpy().astype(float), y.asnumpy().astype(float)
    grads = chain_grads(params, Xn, yn)
    k = layer_index % len(params)
    # Layers before k take their step, k and later stay where they are
    stepped = [(W - lr * dW, b - lr * db) if i < k else (W, b)
               for i, ((W, b), (dW, db)) in enumerate(zip(params, grads))]
    G, G2 = flat(grads[k:k + 1]), flat(chain_grads(stepped, Xn, yn)[k:k + 1])
    l2, cos = landscape.gradient_ics(net, L2, X, y, lr, layer_index)
    assert l2 == pytest.approx(onp.linalg.norm(G - G2), rel=1e-4)
    assert cos == pytest.approx(G @ G2 / onp.linalg.norm(G) / onp.linalg.norm(G2), rel=1e-5)
    assert l2 > 1e-3  # the earlier steps did change the layer's gradient


def test_gradient_ics_of_first_layer_is_zero_and_of_parameterless_layer_refused():
    net, X, y = linear_chain([3, 1])
    assert landscape.gradient_ics(net, L2, X, y, 0.5, 0) == (0.0, pytest.approx(1.0))
    lenet = models.lenet(None)
    lenet.initialize()
    with pytest.raises(ValueError, match="no trainable parameters"):
        landscape.gradient_ics(lenet, L2, np.ones((2, 1, 28, 28)), np.zeros(2), 0.1, 1)
    with pytest.raises(IndexError):
        landscape.gradient_ics(net, L2, X, y, 0.5, 2)


def test_gradient_change_and_feature_stats():
    assert landscape.gradient_change([3.0, 4.0], [3.0, 4.0]) == (0.0, 1.0)
    assert landscape.gradient_change([1.0, 0.0], [0.0, 2.0]) == (pytest.approx(5 ** 0.5), 0.0)
    assert onp.isnan(landscape.gradient_change([0.0, 0.0], [1.0, 0.0])[1])
    # Channel 0 holds 1s and 3s (mean 2, sd 1), channel 1 only 10s (mean 10, sd 0)
    H = onp.zeros((2, 2, 3, 3))
    H[0, 0], H[1, 0], H[:, 1] = 1.0, 3.0, 10.0
    assert landscape.feature_stats(H) == pytest.approx((6.0, 0.5))
    assert landscape.feature_stats(H[:, :, 0, 0]) == pytest.approx((6.0, 0.5))


@pytest.mark.parametrize("norm", ["scratch", "gluon"])
def test_layer_input_stats_is_the_previous_layers_output_in_prediction_mode(norm):
    net = models.lenet(norm)
    net.initialize(mx.init.Xavier())
    X = np.random.uniform(size=(8, 1, 28, 28))
    with autograd.record():  # one training pass, so the moving statistics are not 0 and 1
        net(X).sum().backward()
    assert landscape.layer_input_stats(net, X, 0) == landscape.feature_stats(X.asnumpy())
    h = X
    for layer in list(net)[:3]:  # outside recording: prediction mode
        h = layer(h)
    expected = landscape.feature_stats(h.asnumpy())
    assert landscape.layer_input_stats(net, X, 3) == expected
    assert landscape.layer_input_stats(net, X, 3 - len(net)) == expected


@pytest.mark.parametrize("norm,hybridize", [("gluon", True), ("gluon", False), ("fast", True),
                                            ("scratch", False), (None, True)])
def test_measurements_restore_every_array_bit_for_bit(norm, hybridize):
    net = models.lenet(norm)
    net.initialize(mx.init.Xavier())
    if hybridize:
        net.hybridize()
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    X, y = np.random.uniform(size=(8, 1, 28, 28)), np.random.randint(0, 10, size=(8,))
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5})
    train.sgd_step(net, trainer, loss, X, y)  # statistics and gradients not at their init
    before = all_arrays(net)
    landscape.layer_input_stats(net, X, 4)
    landscape.gradient_ics(net, loss, X, y, 0.5, 4 if norm else 3)  # the second convolution
    landscape.loss_landscape(net, loss, X, y, 0.5)
    after = all_arrays(net)
    num_stats = 8 if norm else 0  # 4 BN layers, 2 moving statistics each, without gradient
    assert len(before) == len(after) == 2 * len(net.collect_params().keys()) - num_stats
    for a, b in zip(before, after):
        assert a.tobytes() == b.tobytes()
    # The check has teeth: a training pass moves every array, statistics included
    train.sgd_step(net, trainer, loss, X, y)
    assert all(not onp.array_equal(a, b) for a, b in zip(before, all_arrays(net)))


def test_measurements_complete_deferred_initialisation():
    net = models.lenet("gluon")
    net.initialize(mx.init.Xavier())
    X, y = np.random.uniform(size=(4, 1, 28, 28)), np.random.randint(0, 10, size=(4,))
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    l2, cos = landscape.gradient_ics(net, loss, X, y, 0.5, 4)
    stats = [p for p in net.collect_params().values() if p.grad_req == "null"]
    assert len(stats) == 8
    assert all(float(np.abs(p.data()).sum()) in (0, p.data().size) for p in stats)
    # The values are those of the weights the net now holds: the second convolution's
    # gradient of the batch mean loss, before and after layers 0-3 take their SGD step
    def conv_grad():
        with autograd.record():
            loss(net(X), y).mean().backward()
        return flat([(net[4].weight.grad().asnumpy(), net[4].bias.grad().asnumpy())])

    G = conv_grad()
    earlier = [p for layer in list(net)[:4] for p in layer.collect_params().values()
               if p.grad_req != "null"]
    for p in earlier:
        p.set_data(p.data() - 0.5 * p.grad())
    G2 = conv_grad()
    assert l2 == pytest.approx(onp.linalg.norm(G - G2), rel=1e-4)
    assert cos == pytest.approx(G @ G2 / onp.linalg.norm(G) / onp.linalg.norm(G2), rel=1e-5,
                                abs=1e-6)  # cos is near 0 here, where rel alone is strict
    assert l2 > 1e-3  # the earlier steps did change the layer's gradient


def tracked(every, num_steps=5, measure=True):
    """SGD steps of a seeded BN LeNet on 100 synthetic images, batch 16, with or without track."""
    train.seed_all(0)
    train_iter, _ = synthetic_iters(n=120, batch_size=16)
    net = models.lenet("gluon")
    net.initialize(mx.init.Xavier())
    probe = np.array(onp.random.default_rng(2).uniform(size=(16, 1, 28, 28)), dtype="float32")
    record = None
    if measure:
        record = landscape.track(net, train_iter, num_steps, 1.0, every, 4, probe, quiet=True)
    else:
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 1.0})
        loss = gluon.loss.SoftmaxCrossEntropyLoss()
        batches = (batch for _ in range(num_steps) for batch in train_iter)
        for _, (X, y) in zip(range(num_steps), batches):
            train.sgd_step(net, trainer, loss, X, y)
    return record, [p.data().asnumpy() for p in net.collect_params().values()]


def test_track_records_every_few_steps_repeatably_without_changing_training():
    record, params = tracked(every=2)
    assert set(record) == set(landscape.TRACKED)
    assert record["step"] == [0, 2, 4]
    assert all(len(values) == 3 for values in record.values())
    json.dumps(record, allow_nan=False)
    assert all(type(v) in (int, float) for values in record.values() for v in values)
    assert record == tracked(every=2)[0]
    # Measuring restores the net, so training follows the same path bit for bit
    unmeasured = tracked(every=1, measure=False)[1]
    for measured in (params, tracked(every=1)[1]):
        for a, b in zip(measured, unmeasured):
            assert a.tobytes() == b.tobytes()


def test_track_takes_the_steps_it_is_given_and_prints_a_line_per_record(monkeypatch, capsys):
    monkeypatch.setenv(mode.QUICK_ENV, "1")  # quick mode is the lab's business, not track's
    train_iter, _ = synthetic_iters(n=120, batch_size=16)
    net = models.lenet(None)
    net.initialize(mx.init.Xavier())
    probe = next(iter(train_iter))[0]
    record = landscape.track(net, train_iter, 8, 0.5, 3, 3, probe, scales=(1, 2))
    assert record["step"] == [0, 3, 6]
    out = capsys.readouterr().out
    assert "quick mode" not in out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("step")] == [
        "step 0/8", "step 3/8", "step 6/8"]
    with pytest.raises(ValueError, match="every"):
        landscape.track(net, train_iter, 4, 0.5, 0, 3, probe)
    with pytest.raises(ValueError, match="no batches"):
        landscape.track(net, [], 4, 0.5, 1, 3, probe)
