"""What BN undoes: per-channel shifts and scales, checked against NumPy float64."""

import mxnet as mx
import numpy as onp
import pytest
from mxnet import autograd, gluon, np
from mxnet.gluon import nn

import d2lbn
from d2lbn import models, train
from d2lbn.analysis import invariance


def numpy_standardize(Z, eps):
    """Float64 reference: each channel (axis 1) by its mean and biased variance."""
    axes = (0,) + tuple(range(2, Z.ndim))
    mu, var = Z.mean(axis=axes, keepdims=True), Z.var(axis=axes, keepdims=True)
    return (Z - mu) / onp.sqrt(var + eps)


@pytest.mark.parametrize("shape", [(32, 5), (8, 3, 4, 4)])
def test_standardize_is_training_mode_bn(shape):
    Z = onp.random.default_rng(0).normal(2.0, 3.0, size=shape)
    got = invariance.standardize(np.array(Z, dtype="float64"), eps=1e-5).asnumpy()
    onp.testing.assert_allclose(got, numpy_standardize(Z, 1e-5), rtol=1e-10, atol=1e-10)


def test_shift_and_scale_per_channel_are_undone_up_to_sign():
    rng = onp.random.default_rng(1)
    Z = rng.normal(size=(64, 6))
    c = rng.uniform(0.1, 10.0, size=6) * onp.array([1, -1, 1, -1, 1, 1])
    b = rng.normal(size=6)
    Y = invariance.standardize(np.array(Z * c + b), eps=0.0).asnumpy()
    onp.testing.assert_allclose(Y, onp.sign(c) * numpy_standardize(Z, 0.0), atol=1e-10)
    mixed = invariance.standardize(np.array(Z @ rng.normal(size=(6, 6))), eps=0.0).asnumpy()
    assert onp.abs(mixed - numpy_standardize(Z, 0.0)).max() > 0.1


@pytest.mark.parametrize("hybridize", [False, True])
def test_channel_scale_multiplies_and_is_never_trained(hybridize):
    scales = onp.array([0.5, 2.0, 3.0])
    net = nn.HybridSequential()
    net.add(nn.Conv2D(3, kernel_size=3), invariance.ChannelScale(scales, num_dims=4))
    net.initialize(mx.init.Xavier(), force_reinit=True)
    if hybridize:
        net.hybridize()
    X = np.array(onp.random.default_rng(2).normal(size=(4, 1, 6, 6)), dtype="float32")
    want = net[0](X).asnumpy() * scales.reshape(1, 3, 1, 1)
    onp.testing.assert_allclose(net(X).asnumpy(), want, rtol=1e-6)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 1.0})
    with autograd.record():
        loss = (net(X) ** 2).sum()
    loss.backward()
    trainer.step(1)
    net.initialize(mx.init.Xavier(), force_reinit=True)
    onp.testing.assert_allclose(net[1].scale.data().asnumpy().reshape(-1), scales, rtol=1e-7)


def test_log_uniform_factors():
    a = invariance.log_uniform(120, 0.1, 10.0, seed=0)
    assert a.shape == (120,) and a.min() >= 0.1 and a.max() <= 10.0
    assert (a < 1).any() and (a > 1).any()
    onp.testing.assert_array_equal(a, invariance.log_uniform(120, 0.1, 10.0, seed=0))
    assert not onp.array_equal(a[:84], invariance.log_uniform(84, 0.1, 10.0, seed=0))
    with pytest.raises(ValueError, match="low"):
        invariance.log_uniform(3, 0.0, 1.0)


# eps so small that BN's invariance to scale holds to float32 rounding
TINY_EPS = {"gluon": lambda c, d: nn.BatchNorm(in_channels=c, epsilon=1e-9),
            "scratch": lambda c, d: d2lbn.BatchNorm(c, num_dims=d, eps=1e-9)}


def outputs_and_gradient(nets):
    """Each net's training-mode output and first-layer gradient, from the same initial weights."""
    X = np.array(onp.random.default_rng(3).uniform(size=(32, 1, 28, 28)), dtype="float32")
    y = np.array(onp.random.default_rng(4).integers(0, 10, size=32), dtype="float32")
    results = []
    for net in nets:
        train.seed_all(0)
        net.initialize(mx.init.Xavier(), force_reinit=True)
        with autograd.record():
            out = net(X)
            loss = gluon.loss.SoftmaxCrossEntropyLoss()(out, y)
        loss.backward()
        results.append((out.asnumpy(), net[0].weight.data().asnumpy(),
                        net[0].weight.grad().asnumpy()))
    return results


@pytest.mark.parametrize("norm", ["gluon", "scratch"])
def test_scaled_lenet_computes_and_learns_what_the_plain_one_does(norm):
    """Same initial weights, so the same outputs and gradients in training mode."""
    (out0, w0, g0), (out1, w1, g1) = outputs_and_gradient(
        [models.lenet(TINY_EPS[norm], use_bias=False),
         models.lenet(invariance.scaled_norm(TINY_EPS[norm], 0.1, 10.0), use_bias=False)])
    onp.testing.assert_array_equal(w0, w1)
    onp.testing.assert_allclose(out1, out0, rtol=1e-4, atol=1e-5)
    onp.testing.assert_allclose(g1, g0, rtol=1e-3, atol=1e-4 * onp.abs(g0).max())


def test_with_the_default_eps_small_factors_change_the_output():
    """eps stops the invariance where a channel's scaled variance comes near it."""
    diffs = []
    for low, high in [(1.0, 10.0), (0.01, 0.1)]:
        (out0, _, _), (out1, _, _) = outputs_and_gradient(
            [models.lenet("gluon", use_bias=False),
             models.lenet(invariance.scaled_norm("gluon", low, high), use_bias=False)])
        diffs.append(onp.abs(out1 - out0).max())
    assert diffs[0] < 1e-3 < diffs[1]
