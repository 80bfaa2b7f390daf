"""Batch renormalization: the function against float64 NumPy and BN, its schedule, its Block."""

import math

import mxnet as mx
import numpy as onp
import pytest
from helpers import (
    assert_close_in,
    batch,
    check_refused,
    float64,
    numpy_batch_norm,
    parameter_bytes,
    random_inputs,
)
from mxnet import autograd, gluon, np
from mxnet.gluon import nn

import d2lbn
from d2lbn import models, train
from d2lbn.functional import channel_axes
from d2lbn.norms.renorm import BatchRenorm, batch_renorm, renorm_limits

SHAPES = [(8, 5), (6, 4, 7), (4, 3, 5, 6)]
EPS, MOMENTUM = 1e-5, 0.99
TOL = dict(rtol=1e-4, atol=1e-4)
NAMES = ["Y", "dX", "dgamma", "dbeta", "moving_mean", "moving_var"]


def param_shape(shape):
    return (1, shape[1]) + (1,) * (len(shape) - 2)


def run(fn, X, gamma, beta, mean, var, head, training=True, **limits):
    """``fn`` recorded forward and backward: Y, dX, dgamma, dbeta and the new moving stats."""
    X, gamma, beta = X.copy(), gamma.copy(), beta.copy()
    for a in (X, gamma, beta):
        a.attach_grad()
    with autograd.record(train_mode=training):
        Y, new_mean, new_var = fn(X, gamma, beta, mean, var, EPS, MOMENTUM, **limits)
    Y.backward(head)
    return [a.asnumpy() for a in (Y, X.grad, gamma.grad, beta.grad, new_mean, new_var)]


def numpy_renorm(X, gamma, beta, mean, var, head, r_max, d_max):
    """Float64 forward and analytic backward of batch renorm in training mode; also r and d."""
    axes = channel_axes(X.ndim)
    mu = X.mean(axis=axes, keepdims=True)
    var_batch = X.var(axis=axes, keepdims=True)
    sigma_batch, sigma = onp.sqrt(var_batch + EPS), onp.sqrt(var + EPS)
    r = onp.clip(sigma_batch / sigma, 1 / r_max, r_max)
    d = onp.clip((mu - mean) / sigma, -d_max, d_max)
    X_bn = (X - mu) / sigma_batch
    X_hat = X_bn * r + d
    Y = gamma * X_hat + beta
    # With r and d constants, Y = (gamma * r) * X_bn + (gamma * d + beta): BN with
    # scale gamma * r, so dX is BN's backward of dX_bn = head * gamma * r (= r times
    # BN's dX). Finite differences would differentiate through r and d: not this
    g = head * gamma * r
    dX = (g - g.mean(axis=axes, keepdims=True)
          - X_bn * (g * X_bn).mean(axis=axes, keepdims=True)) / sigma_batch
    dgamma = (head * X_hat).sum(axis=axes, keepdims=True)
    dbeta = head.sum(axis=axes, keepdims=True)
    new_mean = MOMENTUM * mean + (1 - MOMENTUM) * mu
    new_var = MOMENTUM * var + (1 - MOMENTUM) * var_batch
    return [Y, dX, dgamma, dbeta, new_mean, new_var], r, d


def far_stats(X):
    """Moving statistics far from ``X``'s: sigma = sigma_B / 10, mu = mu_B - 10 sigma_B."""
    axes = channel_axes(X.ndim)
    mu, var = X.mean(axis=axes, keepdims=True), X.var(axis=axes, keepdims=True)
    return mu - 10 * onp.sqrt(var), var / 100


# limits and moving statistics: no clipping, some, all (moving statistics far off)
CASES = {"wide": (1e3, 1e3), "tight": (1.5, 0.5), "far": (1.5, 0.5)}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_reference(shape, case):
    inputs = random_inputs(shape, seed=0)
    r_max, d_max = CASES[case]
    if case == "far":
        mean, var = far_stats(inputs[0].asnumpy())
        inputs[3], inputs[4] = np.array(mean), np.array(var)
    got = run(batch_renorm, *inputs, r_max=r_max, d_max=d_max)
    want, r, d = numpy_renorm(*[a.asnumpy().astype("float64") for a in inputs], r_max, d_max)
    for name, g, w in zip(NAMES, got, want):
        onp.testing.assert_allclose(g, w, **TOL, err_msg=name)
    # the cases test what they say
    clipped_r = onp.isclose(r, r_max) | onp.isclose(r, 1 / r_max)
    clipped_d = onp.isclose(abs(d), d_max)
    if case == "wide":
        assert not clipped_r.any() and not clipped_d.any()
    elif case == "tight":
        assert clipped_r.any() and clipped_d.any()
    else:
        assert clipped_r.all() and clipped_d.all()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_unit_limits_are_batch_norm(shape):
    inputs = random_inputs(shape, seed=1)
    got = run(batch_renorm, *inputs, r_max=1.0, d_max=0.0)
    want = run(d2lbn.batch_norm, *inputs)
    # bit for bit: r = 1 and d = 0 multiply and add exactly, forward and backward
    for name, g, w in zip(NAMES, got, want):
        onp.testing.assert_array_equal(g, w, err_msg=name)


def test_far_stats_clip_to_the_limits():
    X, gamma, beta, _, _, head = random_inputs((6, 3, 4, 4), seed=2)
    mean, var = (np.array(a) for a in far_stats(X.asnumpy()))
    Y, dX, *_ = run(batch_renorm, X, gamma, beta, mean, var, head, r_max=2.0, d_max=3.0)
    Y_bn, dX_bn, *_ = run(d2lbn.batch_norm, X, gamma, beta, mean, var, head)
    g, b = gamma.asnumpy(), beta.asnumpy()
    # r = sigma_B / sigma = 10 is clipped to 2, d = 100 to 3
    onp.testing.assert_allclose(Y, g * ((Y_bn - b) / g * 2.0 + 3.0) + b, **TOL)
    onp.testing.assert_allclose(dX, 2.0 * dX_bn, **TOL)


def test_unclipped_trains_with_prediction_forward_but_batch_gradient():
    X, gamma, beta, mean, var, head = random_inputs((8, 4, 3, 3), seed=3)
    Y, dX, *_ = run(batch_renorm, X, gamma, beta, mean, var, head, r_max=1e3, d_max=1e3)
    Y_pred, dX_pred, *_ = run(d2lbn.batch_norm, X, gamma, beta, mean, var, head,
                              training=False)
    # r and d undo the batch statistics in the forward pass...
    onp.testing.assert_allclose(Y, Y_pred, **TOL)
    # ...but not in the backward pass, where mu_B and sigma_B still depend on X
    assert not onp.allclose(dX, dX_pred, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_prediction_is_batch_norm_prediction(shape):
    inputs = random_inputs(shape, seed=4)
    got = run(batch_renorm, *inputs, training=False, r_max=3.0, d_max=5.0)
    want = numpy_batch_norm(*float64(inputs), training=False, eps=EPS, momentum=MOMENTUM)
    for name, g, w in zip(NAMES, got, want):
        onp.testing.assert_allclose(g, w, **TOL, err_msg=name)
    onp.testing.assert_array_equal(got[4], inputs[3].asnumpy())  # statistics untouched
    onp.testing.assert_array_equal(got[5], inputs[4].asnumpy())


@pytest.mark.parametrize("r_max, d_max", [(0.5, 1.0), (3.0, -1.0), (math.nan, 0.0)])
def test_bad_limits(r_max, d_max):
    X, gamma, beta, mean, var, _ = random_inputs((4, 3))
    match = "r_max" if not r_max >= 1 else "d_max"
    with pytest.raises(ValueError, match=match):
        batch_renorm(X, gamma, beta, mean, var, EPS, MOMENTUM, r_max, d_max)
    with pytest.raises(ValueError, match=match):
        renorm_limits(0, r_max=r_max, d_max=d_max)
    with pytest.raises(ValueError, match=match):
        BatchRenorm(3, 2, r_max=r_max, d_max=d_max)


def test_schedule():
    kw = dict(start=10, ramp=20, r_max=3.0, d_max=5.0)
    assert renorm_limits(0, **kw) == (1.0, 0.0)
    assert renorm_limits(10, **kw) == (1.0, 0.0)  # BN up to and at start
    assert renorm_limits(20, **kw) == (2.0, 2.5)  # halfway
    assert renorm_limits(30, **kw) == (3.0, 5.0)
    assert renorm_limits(10**6, **kw) == (3.0, 5.0)
    limits = onp.array([renorm_limits(s, **kw) for s in range(40)])
    assert (onp.diff(limits, axis=0) >= 0).all()
    assert renorm_limits(0) == (1.0, 0.0) and renorm_limits(10**6) == (3.0, 5.0)
    # no ramp: BN before start, the final limits from start on
    assert renorm_limits(9, start=10, ramp=0) == (1.0, 0.0)
    assert renorm_limits(10, start=10, ramp=0) == (3.0, 5.0)
    for bad in (dict(step=-1), dict(step=0, start=-1), dict(step=0, ramp=-1)):
        with pytest.raises(ValueError, match="must be >= 0"):
            renorm_limits(**bad)


def test_block_counts_steps_and_follows_schedule():
    bn = BatchRenorm(4, 2, r_max=2.0, d_max=1.0, warmup_start=1, warmup_ramp=2)
    bn.initialize()
    assert bn.step == 0 and bn.momentum == 0.99
    assert bn.num_steps.grad_req == "null"
    seen = []
    for i in range(5):
        X, gamma, beta, _, _, head = random_inputs((8, 4), seed=10 + i)
        mean, var = bn.moving_mean.data().copy(), bn.moving_var.data().copy()
        limits = bn.limits_at(bn.step)
        seen.append(limits)
        with autograd.record():
            Y = bn(X)
        Y.backward(head)
        want = run(batch_renorm, X, bn.gamma.data(), bn.beta.data(), mean, var, head,
                   r_max=limits[0], d_max=limits[1])
        got = [Y.asnumpy(), None, bn.gamma.grad().asnumpy(), bn.beta.grad().asnumpy(),
               bn.moving_mean.data().asnumpy(), bn.moving_var.data().asnumpy()]
        for name, g, w in zip(NAMES, got, want):
            if g is not None:
                onp.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=name)
        assert bn.step == i + 1
        bn(X)  # prediction mode does not count
        assert bn.step == i + 1
    assert seen == [(1.0, 0.0), (1.0, 0.0), (1.5, 0.5), (2.0, 1.0), (2.0, 1.0)]
    bn.initialize(force_reinit=True)  # as train.train does: the schedule restarts
    assert bn.step == 0
    assert "r_max=2.0" in repr(bn) and "warmup_ramp=2" in repr(bn)


def sgd_steps(net, n, in_shape, seed=0):
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    for i in range(n):
        X = random_inputs(in_shape, seed=seed + i)[0]
        train.sgd_step(net, trainer, loss, X, np.array(onp.arange(in_shape[0]) % 4))


def renorm_net():
    net = nn.Sequential()
    net.add(nn.Dense(6, in_units=5), BatchRenorm(6, 2, warmup_start=1, warmup_ramp=3),
            nn.Dense(4, in_units=6))
    return net


def test_save_load_round_trip(tmp_path):
    net = renorm_net()
    net.initialize(mx.init.Xavier())
    sgd_steps(net, 3, (8, 5))
    path = str(tmp_path / "renorm.params")
    net.save_parameters(path)
    clone = renorm_net()
    clone.initialize()
    clone.load_parameters(path)
    assert clone[1].step == 3  # the schedule resumes where it was
    assert not onp.allclose(clone[1].moving_var.data().asnumpy(), 1)
    X = random_inputs((5, 5), seed=42)[0]
    onp.testing.assert_array_equal(clone(X).asnumpy(), net(X).asnumpy())
    with autograd.record():
        Y, Y_clone = net(X), clone(X)
    onp.testing.assert_array_equal(Y_clone.asnumpy(), Y.asnumpy())


def test_lenet_trains_with_renorm():
    def norm(c, d):
        return BatchRenorm(c, num_dims=d, warmup_start=1, warmup_ramp=1)

    net = models.lenet(norm=norm)
    rng = onp.random.default_rng(0)
    X = np.array(rng.normal(size=(24, 1, 28, 28)), dtype="float32")
    y = np.array(onp.arange(24) % 10, dtype="float32")
    data = gluon.data.DataLoader(gluon.data.ArrayDataset(X, y), batch_size=8)
    history = train.train(net, data, data, num_epochs=1, lr=0.5, device=mx.cpu(),
                          hybridize=True)
    layers = [b for b in net if isinstance(b, BatchRenorm)]
    assert len(layers) == 4 and all(b.step == 3 for b in layers)
    assert layers[0].limits_at(layers[0].step) == (3.0, 5.0)  # renorm was on by the end
    assert all(math.isfinite(v) for v in history.loss + history.test_acc)
    for p in net.collect_params().values():
        assert onp.isfinite(p.data().asnumpy()).all(), p.name


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_each_dtype_is_honoured(dtype):
    inputs = [a.astype(dtype) for a in random_inputs((6, 3, 4, 4), seed=5)]
    # (wide limits: no clipping, whose thresholds float16 could move)
    got = run(batch_renorm, *inputs, r_max=1e3, d_max=1e3)
    want, _, _ = numpy_renorm(*[a.asnumpy().astype("float64") for a in inputs], 1e3, 1e3)
    assert_close_in(dtype, got, want, names=NAMES)


def _bad(i, value):
    args = random_inputs((4, 3, 2, 2))[:5]
    return args[:i] + [value] + args[i + 1:]


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("args, match", [
    (lambda: _bad(0, np.ones((0, 3, 2, 2))), "empty input"),
    (lambda: _bad(0, np.ones((4,))), "1-D"),
    (lambda: _bad(1, np.ones((1, 5, 1, 1))), "gamma must have shape"),
    (lambda: _bad(4, np.ones((1, 3, 1, 1), dtype="float64")), "moving_var is float64"),
], ids=["empty", "1-D", "gamma", "dtype"])
def test_bad_arguments_are_refused_up_front(args, match, training):
    with pytest.raises(ValueError, match=match):
        with autograd.record(train_mode=training):
            batch_renorm(*args(), EPS, MOMENTUM, r_max=2.0, d_max=1.0)


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("X, match", [
    (lambda: batch((0, 3, 2, 2)), "empty input"),
    (lambda: batch((4, 3, 2, 2)).astype("float64"), "parameters are float32 but the input"),
    (lambda: batch((4, 5, 2, 2)), r"3 channels.*got 5"),
], ids=["empty", "float64", "channels"])
def test_bad_input_leaves_the_layer_as_it_was(X, match, training):
    bn = BatchRenorm(3, 4, warmup_start=0, warmup_ramp=1)
    bn.initialize()
    good = batch((4, 3, 2, 2))
    with autograd.record():
        bn(good)
    # Statistics and step count, bit for bit
    check_refused(bn, X(), match, training=training)
    assert bn.step == 1
    before = parameter_bytes(bn)
    with autograd.record():
        bn(good + 1)
    assert parameter_bytes(bn) != before
