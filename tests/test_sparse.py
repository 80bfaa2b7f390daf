"""BN with magnitude pruning of activations, and weight pruning, against NumPy references."""

import math

import mxnet as mx
import numpy as onp
import pytest
from helpers import (
    batch,
    check_hybridized_equals_imperative,
    numpy_batch_norm,
    numpy_prediction,
    param_shape,
    train_steps,
)
from mxnet import autograd, gluon, np
from norm_refs import EPS, MOMENTUM, TOL32, check_gradients, correlated, recorded

from d2lbn import models
from d2lbn.norms.sparse import (
    PrunedBatchNorm,
    apply_masks,
    keep_count,
    prune_activations,
    prune_weights,
    prune_while_training,
    pruned_batch_norm,
)

SHAPES = [(16, 6), (4, 6, 5, 5), (5, 3, 7)]


def numpy_mask(Y, keep):
    """1 at each example's ``ceil(keep * D)`` values of largest magnitude, else 0."""
    flat = Y.reshape(Y.shape[0], -1)
    k = math.ceil(keep * flat.shape[1])
    mask = onp.zeros_like(flat)
    for row, values in zip(mask, flat):
        row[onp.argsort(-onp.abs(values))[:k]] = 1
    return mask.reshape(Y.shape)


def inputs(shape, seed=0):
    rng = onp.random.default_rng(seed)
    ps = param_shape(shape)
    return [correlated(shape, seed), rng.uniform(0.5, 2, size=ps), rng.normal(size=ps),
            rng.normal(size=ps), rng.uniform(0.5, 2, size=ps)], rng.normal(size=shape)


def test_keep_count():
    assert [keep_count(10, k) for k in (0.5, 0.01, 1.0, 0.33, 0.3)] == [5, 1, 10, 4, 3]
    assert keep_count(3456, 0.5) == 1728
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="keep"):
            keep_count(10, bad)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("keep", [0.5, 0.1, 0.9, 1.0])
def test_prune_activations_keeps_the_largest(shape, keep):
    Y = onp.random.default_rng(1).normal(size=shape)
    got = prune_activations(np.array(Y, dtype="float32"), keep).asnumpy()
    want = Y * numpy_mask(Y, keep)
    onp.testing.assert_allclose(got, want, rtol=1e-6)
    kept = (got != 0).reshape(shape[0], -1).sum(axis=1)
    assert (kept == keep_count(Y[0].size, keep)).all()


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pruned_batch_norm_matches_closed_form(shape, training):
    (X, gamma, beta, mm, mv), head = inputs(shape)
    got = recorded(lambda *a: pruned_batch_norm(*a, EPS, MOMENTUM, keep=0.5),
                   [np.array(a, dtype="float32") for a in (X, gamma, beta, mm, mv)],
                   np.array(head, dtype="float32"), training=training)
    if training:
        Y, _, _, _, new_mm, new_mv = numpy_batch_norm(X, gamma, beta, mm, mv, head)
    else:
        Y = numpy_prediction(X, gamma, beta, mm, mv)
    mask = numpy_mask(Y, 0.5)
    # The mask is constant: BN's backward with the upstream gradient masked
    if training:
        _, dX, dgamma, dbeta, _, _ = numpy_batch_norm(X, gamma, beta, mm, mv, head * mask)
    else:
        axes = (0,) + tuple(range(2, len(shape)))
        scale = gamma / onp.sqrt(mv + EPS)
        dX = head * mask * scale
        dgamma = (head * mask * (X - mm) / onp.sqrt(mv + EPS)).sum(axis=axes, keepdims=True)
        dbeta = (head * mask).sum(axis=axes, keepdims=True)
    for name, g, w in zip(["Y", "dX", "dgamma", "dbeta"], got, [Y * mask, dX, dgamma, dbeta]):
        onp.testing.assert_allclose(g, w, **TOL32, err_msg=name)
    with autograd.train_mode() if training else autograd.predict_mode():
        _, got_mm, got_mv = pruned_batch_norm(*[np.array(a, dtype="float32")
                                                for a in (X, gamma, beta, mm, mv)],
                                              EPS, MOMENTUM)
    want_mm, want_mv = (new_mm, new_mv) if training else (mm, mv)
    onp.testing.assert_allclose(got_mm.asnumpy(), want_mm, **TOL32)
    onp.testing.assert_allclose(got_mv.asnumpy(), want_mv, **TOL32)


@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 2, 2)], ids=str)
def test_pruned_gradients_by_finite_differences(shape):
    (X, gamma, beta, mm, mv), head = inputs(shape, seed=3)
    fn = lambda *a: pruned_batch_norm(*a, np.array(mm), np.array(mv), EPS, MOMENTUM,  # noqa: E731
                                      keep=0.5)
    check_gradients(fn, X, gamma, beta, head)


@pytest.mark.parametrize("shape", SHAPES[:2], ids=str)
def test_block_matches_function(shape):
    layer = PrunedBatchNorm(shape[1], len(shape), keep=0.3)
    layer.initialize()
    assert repr(layer) == (f"PrunedBatchNorm({shape[1]}, num_dims={len(shape)}, keep=0.3, "
                           "eps=1e-05, momentum=0.9)")
    (X, _, _, _, _), head = inputs(shape)
    X, head = np.array(X, dtype="float32"), np.array(head, dtype="float32")
    ones, zeros = np.ones(param_shape(shape)), np.zeros(param_shape(shape))
    for training in (True, False):
        state = [layer.moving_mean.data().copy(), layer.moving_var.data().copy()]
        want = recorded(lambda *a, s=state: pruned_batch_norm(*a, *s, EPS, MOMENTUM, keep=0.3),
                        [X, ones, zeros], head, training=training)
        Xg = X.copy()
        Xg.attach_grad()
        with autograd.record(train_mode=training):
            Y = layer(Xg)
        Y.backward(head)
        got = [Y, Xg.grad, layer.gamma.grad(), layer.beta.grad()]
        for name, g, w in zip(["Y", "dX", "dgamma", "dbeta"], got, want):
            onp.testing.assert_allclose(g.asnumpy(), w, **TOL32, err_msg=name)
    with autograd.train_mode():
        _, mm, mv = pruned_batch_norm(X, ones, zeros, zeros, ones, EPS, MOMENTUM)
    onp.testing.assert_allclose(layer.moving_mean.data().asnumpy(), mm.asnumpy(), **TOL32)
    onp.testing.assert_allclose(layer.moving_var.data().asnumpy(), mv.asnumpy(), **TOL32)


@pytest.mark.parametrize("shape", [(10, 4), (6, 4, 5, 5)], ids=str)
def test_hybridized_equals_imperative(shape):
    make = lambda c, d: PrunedBatchNorm(c, d, keep=0.4)  # noqa: E731
    check_hybridized_equals_imperative(make, make, shape, tol=1e-5)


def test_lenet_trains_with_pruned_bn():
    net = models.lenet(lambda c, d: PrunedBatchNorm(c, d))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    train_steps(net, n=2)
    X = batch((5, 1, 28, 28), 42)
    assert onp.isfinite(net(X).asnumpy()).all()
    assert not onp.allclose(net[1].moving_mean.data().asnumpy(), 0)
    # Half of each example's first-layer activations are 0, in prediction too
    out = net[1](net[0](X)).asnumpy().reshape(5, -1)
    assert ((out != 0).sum(axis=1) == out.shape[1] // 2).all()


def test_prune_weights_zeroes_the_smallest_per_layer():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(7, in_units=5), gluon.nn.Dense(3, in_units=7))
    net.initialize(mx.init.Normal(1.0))
    before = {k: p.data().asnumpy() for k, p in net.collect_params().items()}
    masks = prune_weights(net, 0.4)
    assert sorted(masks) == sorted(k for k in before if k.endswith("weight"))
    for name, w in before.items():
        got = net.collect_params()[name].data().asnumpy()
        if not name.endswith("weight"):
            onp.testing.assert_array_equal(got, w)  # biases untouched
            continue
        cut = int(0.4 * w.size)
        threshold = onp.sort(onp.abs(w).ravel())[cut]
        onp.testing.assert_array_equal(got, onp.where(onp.abs(w) < threshold, 0, w))
        assert (got == 0).sum() == cut
    # A training step moves the pruned weights; apply_masks puts them back to 0
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    with autograd.record():
        loss = (net(batch((4, 5))) ** 2).sum()
    loss.backward()
    trainer.step(4)
    apply_masks(net, masks)
    for name, mask in masks.items():
        w = net.collect_params()[name].data().asnumpy()
        assert (w[mask.asnumpy() == 0] == 0).all() and (w[mask.asnumpy() == 1] != 0).all()
    with pytest.raises(ValueError, match="fraction"):
        prune_weights(net, 1.0)


def numpy_pruned(w, fraction):
    """``w`` with its ``floor(fraction * size)`` smallest magnitudes zeroed (stable order)."""
    flat = w.ravel().copy()
    flat[onp.argsort(onp.abs(flat), kind="stable")[:int(fraction * flat.size)]] = 0
    return flat.reshape(w.shape)


def test_prune_while_training_prunes_before_every_call():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(7), gluon.nn.Dense(3))                   # shapes deferred
    assert prune_while_training(net, 0.4) is net
    net.initialize(mx.init.Normal(1.0))
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.05})
    X = batch((4, 5))

    def weights():
        return {k: p.data().asnumpy() for k, p in net.collect_params().items()}

    with autograd.record():
        loss = (net(X) ** 2).sum()                                  # creates the weights
    loss.backward()
    trainer.step(4)
    for _ in range(3):
        before = weights()
        with autograd.record():
            out = net(X)
            loss = (out ** 2).sum()
        after = weights()
        for name, w in before.items():
            want = numpy_pruned(w, 0.4) if name.endswith("weight") else w
            onp.testing.assert_array_equal(after[name], want, err_msg=name)
        # the call used the pruned weights: a float64 forward pass with them
        (w1, b1), (w2, b2) = [(after[layer.weight.name], after[layer.bias.name]) for layer in net]
        Xn = X.asnumpy().astype("float64")
        want = (Xn @ w1.T + b1) @ w2.T + b2
        onp.testing.assert_allclose(out.asnumpy(), want, rtol=1e-5, atol=1e-5)
        loss.backward()
        trainer.step(4)
        # the step moves pruned entries; the next call prunes afresh
        assert any((p.data().asnumpy() == 0).sum() < int(0.4 * p.data().size)
                   for k, p in net.collect_params().items() if k.endswith("weight"))
    with pytest.raises(ValueError, match="fraction"):
        prune_while_training(net, 1.0)
