"""Inputs, references and checks that several test modules share."""

import warnings
from pathlib import Path

import nbformat
import numpy as onp
import pytest
from mxnet import autograd, gluon, np, npx

import d2lbn
from d2lbn import train
from d2lbn.functional import channel_axes

# -- the BN functions: d2lbn.batch_norm's contract ---------------------------------------------

EPS, MOMENTUM = 1e-5, 0.9
TOL = dict(rtol=1e-4, atol=1e-4)
NAMES = ["Y", "dX", "dgamma", "dbeta", "moving_mean", "moving_var"]


def param_shape(shape):
    """The shape of per-channel parameters for an input of ``shape``: (1, C, 1, ...)."""
    return (1, shape[1]) + (1,) * (len(shape) - 2)


def random_inputs(shape, seed=None):
    """Input with per-channel offset and scale, and non-trivial parameters."""
    rng = onp.random.default_rng(len(shape) if seed is None else seed)
    X = rng.normal(1.5, 2.0, size=shape) * rng.uniform(0.5, 3, size=param_shape(shape))
    gamma = rng.uniform(0.5, 2.0, size=param_shape(shape))
    beta = rng.normal(size=param_shape(shape))
    mean = rng.normal(size=param_shape(shape))
    var = rng.uniform(0.5, 2.0, size=param_shape(shape))
    head = rng.normal(size=shape)  # upstream gradient, so that dX is not trivially 0
    return [np.array(a, dtype="float32") for a in (X, gamma, beta, mean, var, head)]


def ours(X, gamma, beta, mean, var, head, training=True, fn=d2lbn.batch_norm):
    """One recorded pass of ``fn`` on copies: ``Y``, its three gradients, the new statistics."""
    X, gamma, beta = X.copy(), gamma.copy(), beta.copy()
    for a in (X, gamma, beta):
        a.attach_grad()
    with autograd.record(train_mode=training):
        Y, new_mean, new_var = fn(X, gamma, beta, mean, var, EPS, MOMENTUM)
    Y.backward(head)
    return Y, X.grad, gamma.grad, beta.grad, new_mean, new_var


def numpy_batch_norm(X, gamma, beta, mean, var, head, training=True, eps=EPS,
                     momentum=MOMENTUM):
    """The tests' one BN reference, float64: ``Y, dX, dgamma, dbeta, moving_mean, moving_var``.

    Training mode normalises with the batch's statistics (biased variance), backpropagates
    through them and moves the statistics; prediction mode uses and keeps ``mean, var``.
    """
    X, gamma, beta, mean, var, head = (onp.asarray(a, dtype="float64")
                                       for a in (X, gamma, beta, mean, var, head))
    axes = channel_axes(X.ndim)
    if training:
        mu = X.mean(axis=axes, keepdims=True)
        sigma2 = X.var(axis=axes, keepdims=True)
    else:
        mu, sigma2 = mean, var
    inv = 1.0 / onp.sqrt(sigma2 + eps)
    X_hat = (X - mu) * inv
    dX_hat = head * gamma
    if training:
        m = X.size // X.shape[1]
        dX = inv / m * (m * dX_hat - dX_hat.sum(axis=axes, keepdims=True)
                        - X_hat * (dX_hat * X_hat).sum(axis=axes, keepdims=True))
        mean = momentum * mean + (1 - momentum) * mu
        var = momentum * var + (1 - momentum) * sigma2
    else:
        dX = dX_hat * inv  # the statistics are constants
    dgamma = (head * X_hat).sum(axis=axes, keepdims=True)
    dbeta = head.sum(axis=axes, keepdims=True)
    return gamma * X_hat + beta, dX, dgamma, dbeta, mean, var


# Error bound per dtype, relative to the largest magnitude of each result: a few
# roundings of the dtype. float64's also catches a detour through float32
DTYPE_TOL = {"float16": 5e-3, "float32": 2e-6, "float64": 1e-12}


def assert_close_in(dtype, got, want, names=NAMES):
    """Each of ``got`` has ``dtype`` and lies within ``DTYPE_TOL[dtype]`` of float64 ``want``."""
    for name, g, w in zip(names, got, want):
        g = g.asnumpy() if hasattr(g, "asnumpy") else g
        assert g.dtype == onp.dtype(dtype), (name, g.dtype)
        err = onp.abs(g.astype("float64") - w).max()
        assert err <= DTYPE_TOL[dtype] * max(1.0, onp.abs(w).max()), (name, dtype, err)


def numpy_prediction(X, gamma, beta, mean, var):
    """``numpy_batch_norm``'s output in prediction mode."""
    return numpy_batch_norm(X, gamma, beta, mean, var, onp.zeros_like(X), training=False)[0]


def float64(arrays):
    """MXNet arrays as float64 NumPy arrays, for the references."""
    return [a.asnumpy().astype("float64") for a in arrays]


# -- the Blocks and the nets --------------------------------------------------------------------

def batch(shape, seed=0):
    """A float32 batch of ``shape``, normal with mean 2 and sd 3, fixed by ``seed``."""
    return np.array(onp.random.default_rng(seed).normal(2, 3, size=shape), dtype="float32")


def step(layer, X, head):
    """One recorded forward and backward; return output and gradients."""
    with autograd.record():
        Y = layer(X)
    Y.backward(head)
    return Y, layer.gamma.grad().copy(), layer.beta.grad().copy()


def check_hybridized_equals_imperative(make_plain, make_hybrid, shape, steps=3, tol=1e-6,
                                       stats=("moving_mean", "moving_var")):
    """Training steps, then prediction, compiled and not: the same outputs, gradients, state."""
    plain, hybrid = make_plain(shape[1], len(shape)), make_hybrid(shape[1], len(shape))
    plain.initialize()
    hybrid.initialize()
    hybrid.hybridize()
    for i in range(steps):
        X, head = batch(shape, i), batch(shape, 10 + i)
        for g, w in zip(step(hybrid, X, head), step(plain, X, head)):
            onp.testing.assert_allclose(g.asnumpy(), w.asnumpy(), rtol=tol, atol=tol)
        # switching to prediction mode and back must retrace, not reuse, the graph
        onp.testing.assert_allclose(hybrid(X).asnumpy(), plain(X).asnumpy(), rtol=tol,
                                    atol=tol)
    assert hybrid._cached_op is not None  # it really ran compiled
    for name in stats:
        onp.testing.assert_allclose(getattr(hybrid, name).data().asnumpy(),
                                    getattr(plain, name).data().asnumpy(), rtol=tol)


def parameter_bytes(block):
    """Every parameter's dtype and bytes on every context: equal means equal bit for bit."""
    return {name: [(d.dtype, d.asnumpy().tobytes()) for d in p.list_data()]
            for name, p in block.collect_params().items()}


def check_refused(block, X, match, training=True):
    """``block(X)`` raises ``ValueError`` matching ``match``, warns nothing, changes nothing."""
    before = parameter_bytes(block)
    with warnings.catch_warnings():
        # A warning ahead of the error would mean that the input got that far
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=match):
            with autograd.record(train_mode=training):
                block(X)
    npx.waitall()  # nothing queued that fails later
    assert parameter_bytes(block) == before


def train_steps(net, n=3):
    """``n`` SGD steps (lr 0.1) of ``net`` on fixed batches of eight 1x28x28 images."""
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    for i in range(n):
        train.sgd_step(net, trainer, loss, batch((8, 1, 28, 28), i), np.array(onp.arange(8) % 10))


# -- training data ------------------------------------------------------------------------------

def synthetic_iters(n=600, batch_size=32):
    """Ten classes, each a bright square at its own place on a noisy 28x28 image."""
    rng = onp.random.default_rng(0)
    y = rng.integers(0, 10, size=n)
    X = rng.uniform(0, 0.3, size=(n, 1, 28, 28)).astype("float32")
    for i, label in enumerate(y):
        r, c = divmod(int(label), 5)
        X[i, 0, 4 + 10 * r:12 + 10 * r, 1 + 5 * c:6 + 5 * c] += 0.7
    split = n * 5 // 6
    train_set = gluon.data.ArrayDataset(X[:split], y[:split].astype("int32"))
    test_set = gluon.data.ArrayDataset(X[split:], y[split:].astype("int32"))
    return (gluon.data.DataLoader(train_set, batch_size, shuffle=True),
            gluon.data.DataLoader(test_set, batch_size))


# -- notebooks for the runner and the nbval plugin ---------------------------------------------

def write_notebook(path, *cells) -> Path:
    """A notebook file of code cells: each a source, or ``(source, printed)`` as if run in order."""
    nb = nbformat.v4.new_notebook()
    for count, cell in enumerate(cells, 1):
        if isinstance(cell, str):
            nb.cells.append(nbformat.v4.new_code_cell(cell))
            continue
        source, printed = cell
        outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)] if printed else []
        nb.cells.append(nbformat.v4.new_code_cell(source, execution_count=count, outputs=outputs))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return Path(path)
