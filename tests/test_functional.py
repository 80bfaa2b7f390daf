"""d2lbn.batch_norm against MXNet's fused operator and a float64 NumPy reference."""

import numpy as onp
import pytest
from helpers import EPS, MOMENTUM, NAMES, TOL, numpy_batch_norm, ours, random_inputs
from mxnet import autograd, np, npx

import d2lbn
from d2lbn.fast import batch_norm_fast
from d2lbn.functional import channel_axes, moving_average

SHAPES = [(8, 5), (6, 4, 7), (4, 3, 5, 6), (3, 2, 3, 4, 5), (5, 20, 3, 3)]
# The book's readable function and the fast one share one contract
IMPLS = [d2lbn.batch_norm, batch_norm_fast]


def reference(X, gamma, beta, mean, var, head, training=True):
    """MXNet's fused BatchNorm; it updates its running statistics in backward."""
    X, gamma, beta = X.copy(), gamma.copy(), beta.copy()
    mean, var = mean.reshape(-1).copy(), var.reshape(-1).copy()
    for a in (X, gamma, beta):
        a.attach_grad()
    with autograd.record(train_mode=training):
        Y = npx.batch_norm(X, gamma.reshape(-1), beta.reshape(-1), mean, var, eps=EPS,
                           momentum=MOMENTUM, fix_gamma=False,
                           use_global_stats=not training, axis=1)
    Y.backward(head)
    shape = gamma.shape
    return Y, X.grad, gamma.grad, beta.grad, mean.reshape(shape), var.reshape(shape)


@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_training_matches_mxnet_operator(shape, fn):
    inputs = random_inputs(shape)
    got = ours(*inputs, fn=fn)
    want = reference(*inputs)
    for name, g, w in zip(NAMES, got, want):
        onp.testing.assert_allclose(g.asnumpy(), w.asnumpy(), **TOL, err_msg=name)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_prediction_matches_global_stats(shape):
    inputs = random_inputs(shape)
    got = ours(*[a.copy() for a in inputs], training=False)
    want = reference(*inputs, training=False)
    # Prediction mode leaves the moving statistics as they were
    onp.testing.assert_array_equal(got[4].asnumpy(), inputs[3].asnumpy())
    for name, g, w in zip(NAMES, got, want):
        onp.testing.assert_allclose(g.asnumpy(), w.asnumpy(), **TOL, err_msg=name)


def test_float64_numpy_reference():
    inputs = random_inputs((4, 3, 5, 6))
    got = ours(*inputs)
    want = numpy_batch_norm(*[a.asnumpy().astype("float64") for a in inputs])
    for name, g, w in zip(NAMES, got, want):
        onp.testing.assert_allclose(g.asnumpy(), w, **TOL, err_msg=name)


def test_training_output_is_standardised_per_channel():
    X = np.array(onp.random.default_rng(1).normal(5, 3, size=(16, 4, 6, 6)), dtype="float32")
    one, zero = np.ones((1, 4, 1, 1)), np.zeros((1, 4, 1, 1))
    with autograd.train_mode():
        Y, _, _ = d2lbn.batch_norm(X, one, zero, zero, one, EPS, MOMENTUM)
    Y = Y.asnumpy()
    onp.testing.assert_allclose(Y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    onp.testing.assert_allclose(Y.var(axis=(0, 2, 3)), 1, atol=1e-3)


def test_moving_average_weighs_the_old_value_by_momentum():
    old, new = np.array([10.0, -2.0]), np.array([0.0, 2.0])
    got = moving_average(old, new, 0.9).asnumpy()
    onp.testing.assert_allclose(got, [9.0, -1.6], rtol=1e-6)
    # momentum 0 forgets the past; momentum 1 never moves
    onp.testing.assert_allclose(moving_average(old, new, 0.0).asnumpy(), new.asnumpy())
    onp.testing.assert_allclose(moving_average(old, new, 1.0).asnumpy(), old.asnumpy())


def test_channel_axes_rejects_1d():
    with pytest.raises(ValueError, match="1-D"):
        channel_axes(1)
