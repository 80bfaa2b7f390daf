"""d2lbn.batch_norm against MXNet's fused operator and a float64 NumPy reference."""

import numpy as onp
import pytest
from helpers import (
    EPS,
    MOMENTUM,
    NAMES,
    TOL,
    assert_close_in,
    float64,
    numpy_batch_norm,
    numpy_prediction,
    ours,
    random_inputs,
)
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


# -- one contract for every dtype, and bad arguments refused up front -------------------------

DTYPES = ["float16", "float32", "float64"]
# The fast version has no float16 matrix products on CPU and refuses it
HONOURS = {(fn, dtype): not (fn is batch_norm_fast and dtype == "float16")
           for fn in IMPLS for dtype in DTYPES}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_each_dtype_is_honoured_or_refused(shape, fn, dtype):
    inputs = [a.astype(dtype) for a in random_inputs(shape)]
    if not HONOURS[fn, dtype]:
        with pytest.raises(ValueError, match=f"float32 or float64, not {dtype}"):
            ours(*inputs, fn=fn)
        npx.waitall()  # and nothing was queued that fails later
        return
    # Computed in the input's dtype: its results, gradients and statistics, as
    # close to float64 NumPy on the same (rounded) values as that dtype allows
    assert_close_in(dtype, ours(*inputs, fn=fn), numpy_batch_norm(*float64(inputs)))
    Y = ours(*inputs, training=False, fn=fn)[0]
    assert_close_in(dtype, [Y], [numpy_prediction(*float64(inputs[:5]))])


def _args(shape=(4, 3, 5, 6), dtype="float32"):
    """X, gamma, beta, moving_mean, moving_var for a batch of ``shape``."""
    return [a.astype(dtype) for a in random_inputs(shape)[:5]]


def _replace(args, i, value):
    return args[:i] + [value] + args[i + 1:]


BAD = {
    "1-D input": (lambda: [np.ones((5,))] + _args()[1:], "1-D"),
    "empty batch": (lambda: _replace(_args(), 0, np.ones((0, 3, 5, 6))), "empty input"),
    "no positions": (lambda: _replace(_args(), 0, np.ones((4, 3, 0, 6))), "empty input"),
    "integer input": (lambda: _replace(_args(), 0, np.ones((4, 3, 5, 6), dtype="int32")),
                      "floating-point.*int32"),
    "gamma for 5 channels": (lambda: _replace(_args(), 1, np.ones((1, 5, 1, 1))),
                             r"gamma must have shape \(1, 3, 1, 1\).*got \(1, 5, 1, 1\)"),
    "beta for 5 channels": (lambda: _replace(_args(), 2, np.zeros((1, 5, 1, 1))),
                            "beta must have shape"),
    "moving_mean for 2 channels": (lambda: _replace(_args(), 3, np.zeros((1, 2, 1, 1))),
                                   "moving_mean must have shape"),
    "moving_var for 2-D input": (lambda: _replace(_args(), 4, np.ones((1, 3))),
                                 "moving_var must have shape"),
    # (3,) would broadcast against the last axis (length 6 here: a wrong result, no error)
    "gamma of shape (C,)": (lambda: _replace(_args((4, 3, 5, 3)), 1, np.ones((3,))),
                           "gamma must have shape"),
    "float64 input, float32 parameters": (
        lambda: [_args(dtype="float64")[0]] + _args()[1:],
        "gamma is float32 but the input is float64"),
    "float32 input, a float64 statistic": (
        lambda: _args()[:4] + [_args(dtype="float64")[4]],
        "moving_var is float64 but the input is float32"),
}


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
def test_bad_arguments_are_refused_up_front(fn, case, training):
    make, match = BAD[case]
    args = make()
    before = [a.asnumpy().tobytes() for a in args]
    with pytest.raises(ValueError, match=match):
        with autograd.record(train_mode=training):
            fn(*args, EPS, MOMENTUM)
    npx.waitall()  # nothing was queued that fails later
    assert [a.asnumpy().tobytes() for a in args] == before
