"""Lite BN (``normalize="mean"``, ``"var"`` or ``"rms"``): values, statistics and gradients.

The exercise compares centring only and scaling only (by the standard deviation,
or by the root mean square) with full BN. Both implementations and the three
Blocks are checked against a float64 NumPy reference, against each other, and
the readable one against finite differences; "rms" also against its
hand-derived backward pass.
"""

import functools
import inspect
from functools import partial

import numpy as onp
import pytest
from helpers import (
    EPS,
    MOMENTUM,
    TOL,
    batch,
    check_hybridized_equals_imperative,
    float64,
    numpy_batch_norm,
    ours,
    param_shape,
    random_inputs,
    step,
)
from mxnet import autograd, np

import d2lbn
from d2lbn.fast import FastBatchNorm, batch_norm_fast
from d2lbn.functional import channel_axes

LITE = ["mean", "var", "rms"]
IMPLS = [d2lbn.batch_norm, batch_norm_fast]
# 2-D, 4-D with the dense 1x1 convolution, 4-D with the grouped one (> 32 channels)
SHAPES = [(8, 5), (4, 3, 5, 6), (3, 40, 2, 3)]
MODES = {"training": True, "prediction": False}


def numpy_lite(X, gamma, beta, mean, var, normalize, training):
    """Float64 BN with ``normalize`` in NORMALIZE: ``(Y, moving_mean, moving_var)``."""
    if normalize == "full":
        Y, _, _, _, mean, var = numpy_batch_norm(X, gamma, beta, mean, var, 0 * X, training)
        return Y, mean, var
    axes = channel_axes(X.ndim)
    if training:
        mu, sigma2 = X.mean(axis=axes, keepdims=True), X.var(axis=axes, keepdims=True)
        # "rms": the batch's mean square, straight from its definition
        square = (X ** 2).mean(axis=axes, keepdims=True)
        mean = MOMENTUM * mean + (1 - MOMENTUM) * mu
        var = MOMENTUM * var + (1 - MOMENTUM) * sigma2
    else:
        # "rms" in prediction: the mean square that the moving statistics imply
        mu, sigma2, square = mean, var, var + mean ** 2
    centred = X if normalize in ("var", "rms") else X - mu
    spread = {"var": sigma2, "rms": square}
    scale = 1.0 if normalize == "mean" else 1.0 / onp.sqrt(spread[normalize] + EPS)
    return gamma * centred * scale + beta, mean, var


def numpy_rms_backward(X, gamma, head):
    """Float64 dX, dgamma, dbeta of ``gamma * X / r + beta``, r = sqrt(E[X^2] + eps), by hand."""
    axes = channel_axes(X.ndim)
    m = X.size // X.shape[1]
    r = onp.sqrt((X ** 2).mean(axis=axes, keepdims=True) + EPS)
    g = head * gamma  # the gradient reaching X / r
    # d(x_i / r)/dx_j = delta_ij / r - x_i x_j / (m r^3)
    dX = g / r - X * (g * X).sum(axis=axes, keepdims=True) / (m * r ** 3)
    return dX, (head * X / r).sum(axis=axes, keepdims=True), head.sum(axis=axes, keepdims=True)


@pytest.mark.parametrize("training", MODES.values(), ids=MODES.keys())
@pytest.mark.parametrize("normalize", ["full"] + LITE)
@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_values_and_moving_stats_match_numpy(shape, fn, normalize, training):
    inputs = random_inputs(shape)
    Y, _, _, _, new_mean, new_var = ours(*inputs, training=training,
                                         fn=partial(fn, normalize=normalize))
    want = numpy_lite(*float64(inputs[:5]), normalize, training)
    for name, g, w in zip(["Y", "moving_mean", "moving_var"], [Y, new_mean, new_var], want):
        onp.testing.assert_allclose(g.asnumpy(), w, **TOL, err_msg=name)


@pytest.mark.parametrize("training", MODES.values(), ids=MODES.keys())
@pytest.mark.parametrize("normalize", LITE)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gradients_of_the_two_implementations_agree(shape, normalize, training):
    inputs = random_inputs(shape)
    book, fast = (ours(*inputs, training=training, fn=partial(fn, normalize=normalize))
                  for fn in IMPLS)
    for name, g, w in zip(["dX", "dgamma", "dbeta"], fast[1:4], book[1:4]):
        onp.testing.assert_allclose(g.asnumpy(), w.asnumpy(), **TOL, err_msg=name)


def finite_differences(loss, arrays, h=1e-6):
    """Central differences of ``loss(arrays)`` with respect to every element of each array."""
    grads = []
    for i, a in enumerate(arrays):
        grad = onp.zeros_like(a)
        for idx in onp.ndindex(a.shape):
            plus, minus = list(arrays), list(arrays)
            plus[i], minus[i] = a.copy(), a.copy()
            plus[i][idx] += h
            minus[i][idx] -= h
            grad[idx] = (loss(plus) - loss(minus)) / (2 * h)
        grads.append(grad)
    return grads


@pytest.mark.parametrize("training", MODES.values(), ids=MODES.keys())
@pytest.mark.parametrize("normalize", LITE)
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 2, 2)], ids=str)
def test_gradients_match_finite_differences_float64(shape, normalize, training):
    X, gamma, beta, mean, var, head = float64(random_inputs(shape))
    moving = [np.array(a, dtype="float64") for a in (mean, var)]

    def loss(arrays):
        # train_mode without recording: the batch statistics, no graph
        with autograd.train_mode() if training else autograd.predict_mode():
            Y, _, _ = d2lbn.batch_norm(*[np.array(a, dtype="float64") for a in arrays],
                                       *moving, EPS, MOMENTUM, normalize=normalize)
        return float((Y * np.array(head, dtype="float64")).sum())

    want = finite_differences(loss, [X, gamma, beta])
    got = ours(*[np.array(a, dtype="float64") for a in (X, gamma, beta, mean, var, head)],
               training=training, fn=partial(d2lbn.batch_norm, normalize=normalize))
    assert got[1].dtype == onp.float64
    for name, g, w in zip(["dX", "dgamma", "dbeta"], got[1:4], want):
        onp.testing.assert_allclose(g.asnumpy(), w, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rms_gradients_match_the_hand_derived_backward(shape, fn):
    inputs = random_inputs(shape)
    got = ours(*inputs, training=True, fn=partial(fn, normalize="rms"))
    X, gamma, _, _, _, head = float64(inputs)
    for name, g, w in zip(["dX", "dgamma", "dbeta"], got[1:4], numpy_rms_backward(X, gamma, head)):
        onp.testing.assert_allclose(g.asnumpy(), w, **TOL, err_msg=name)


@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rms_output_has_unit_mean_square_and_keeps_signs(shape, fn):
    X = random_inputs(shape)[0]
    ones, zeros = np.ones(param_shape(shape)), np.zeros(param_shape(shape))
    with autograd.train_mode():
        Y, _, _ = fn(X, ones, zeros, zeros, ones, 1e-12, MOMENTUM, normalize="rms")
    axes = channel_axes(len(shape))
    onp.testing.assert_allclose((Y.asnumpy().astype("float64") ** 2).mean(axis=axes), 1.0,
                                rtol=1e-5)
    assert (onp.sign(Y.asnumpy()) == onp.sign(X.asnumpy())).all()


@pytest.mark.parametrize("normalize", ["full"] + LITE)
@pytest.mark.parametrize("cls", [d2lbn.BatchNorm, d2lbn.HybridBatchNorm, FastBatchNorm])
@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 5, 6)], ids=str)
def test_prediction_after_momentum_zero_repeats_training(shape, cls, normalize):
    """With momentum 0 the moving statistics are the last batch's: prediction on that
    batch must give the training output, so each mode uses them where it used the batch's."""
    bn = cls(shape[1], len(shape), momentum=0.0, normalize=normalize)
    bn.initialize()
    if isinstance(bn, d2lbn.HybridBatchNorm):
        bn.hybridize()
    X = batch(shape, 3)
    with autograd.train_mode():
        Y_train = bn(X)
    onp.testing.assert_allclose(bn(X).asnumpy(), Y_train.asnumpy(), rtol=1e-5, atol=1e-5)


def test_full_is_the_default():
    """The book's BN unless asked otherwise; "full" itself is checked against NumPy above."""
    for fn in IMPLS:
        assert inspect.signature(fn).parameters["normalize"].default == "full", fn.__name__
    for cls in (d2lbn.BatchNorm, d2lbn.HybridBatchNorm, FastBatchNorm):
        assert cls(3, 2).normalize == "full", cls.__name__


@pytest.mark.parametrize("make", [
    *[partial(fn, *random_inputs((4, 3))[:5], EPS, MOMENTUM) for fn in IMPLS],
    partial(d2lbn.BatchNorm, 3, 2), partial(d2lbn.HybridBatchNorm, 3, 2),
    partial(FastBatchNorm, 3, 2)], ids=["batch_norm", "batch_norm_fast", "BatchNorm",
                                        "HybridBatchNorm", "FastBatchNorm"])
@pytest.mark.parametrize("bad", ["Mean", "variance", None])
def test_bad_normalize_is_refused(make, bad):
    with pytest.raises(ValueError, match="normalize must be one of 'full', 'mean', 'var', 'rms'"):
        make(normalize=bad)


@pytest.mark.parametrize("normalize", LITE)
@pytest.mark.parametrize("cls", [d2lbn.BatchNorm, d2lbn.HybridBatchNorm, FastBatchNorm])
@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 5, 6)], ids=str)
def test_blocks_match_numpy(shape, cls, normalize):
    """Two training steps, then prediction: ``normalize`` reaches the compiled graph too."""
    bn = cls(shape[1], len(shape), normalize=normalize)
    bn.initialize()
    if isinstance(bn, d2lbn.HybridBatchNorm):
        bn.hybridize()
    ps = param_shape(shape)
    gamma, beta = onp.ones(ps), onp.zeros(ps)
    mean, var = onp.zeros(ps), onp.ones(ps)
    for i in range(2):
        X = batch(shape, i)
        Y, _, _ = step(bn, X, batch(shape, 10 + i))
        want, mean, var = numpy_lite(X.asnumpy().astype("float64"), gamma, beta, mean, var,
                                     normalize, training=True)
        onp.testing.assert_allclose(Y.asnumpy(), want, **TOL)
    onp.testing.assert_allclose(bn.moving_mean.data().asnumpy(), mean, **TOL)
    onp.testing.assert_allclose(bn.moving_var.data().asnumpy(), var, **TOL)
    X = batch(shape, 99)
    want, _, _ = numpy_lite(X.asnumpy().astype("float64"), gamma, beta, mean, var, normalize,
                            training=False)
    onp.testing.assert_allclose(bn(X).asnumpy(), want, **TOL)


@pytest.mark.parametrize("normalize", LITE)
@pytest.mark.parametrize("plain_cls, hybrid_cls", [(d2lbn.BatchNorm, d2lbn.HybridBatchNorm),
                                                   (FastBatchNorm, FastBatchNorm)])
@pytest.mark.parametrize("shape", [(6, 4, 5, 5), (10, 7)], ids=str)
def test_hybridized_equals_imperative(shape, plain_cls, hybrid_cls, normalize):
    check_hybridized_equals_imperative(functools.partial(plain_cls, normalize=normalize),
                                       functools.partial(hybrid_cls, normalize=normalize),
                                       shape, steps=2)


def test_repr_names_a_lite_mode_only():
    assert repr(FastBatchNorm(3, 4)) == "FastBatchNorm(3, num_dims=4, eps=1e-05, momentum=0.9)"
    assert repr(d2lbn.BatchNorm(3, 2, normalize="var")) == (
        "BatchNorm(3, num_dims=2, eps=1e-05, momentum=0.9, normalize='var')")
    assert d2lbn.HybridBatchNorm(3, 2, normalize="mean").normalize == "mean"
