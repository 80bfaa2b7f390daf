"""Inputs and checks shared by the tests of the chapter's other normalising transforms."""

import mxnet as mx
import numpy as onp
from helpers import batch, train_steps
from mxnet import autograd, np

from d2lbn import models

EPS, MOMENTUM = 1e-5, 0.9
# float32 results against the float64 reference, on outputs of unit scale
TOL32 = dict(rtol=2e-4, atol=2e-4)


def correlated(shape, seed=0):
    """Input whose channels are correlated, with covariance eigenvalues in about [1, 4]."""
    rng = onp.random.default_rng(seed)
    C = shape[1]
    Q, _ = onp.linalg.qr(rng.normal(size=(C, C)))
    mix = Q @ onp.diag(rng.uniform(1, 2, size=C)) @ Q.T
    Z = onp.moveaxis(rng.normal(size=shape), 1, -1) @ mix + rng.normal(0, 3, size=C)
    return onp.moveaxis(Z, -1, 1)


def channel_major(X):
    """``X`` as ``(C, N * positions)``: one row per channel."""
    return onp.moveaxis(X, 1, 0).reshape(X.shape[1], -1)


def from_channel_major(Yt, shape):
    """The inverse of ``channel_major`` for input of ``shape``."""
    return onp.moveaxis(Yt.reshape((shape[1], shape[0]) + tuple(shape[2:])), 0, 1)


def recorded(fn, arrays, head, training=True):
    """Output and gradients of ``fn`` at ``arrays``; the first three get gradients."""
    arrays = [a.copy() for a in arrays]
    for a in arrays[:3]:
        a.attach_grad()
    with autograd.record(train_mode=training):
        Y = fn(*arrays)[0]
    Y.backward(head)
    return [Y.asnumpy()] + [a.grad.asnumpy() for a in arrays[:3]]


def numeric_grads(f, arrays, h=1e-6):
    """Central differences of the scalar ``f(*arrays)`` with respect to each array."""
    grads = []
    for a in arrays:
        grad = onp.zeros_like(a)
        for idx in onp.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + h
            up = f(*arrays)
            a[idx] = old - h
            down = f(*arrays)
            a[idx] = old
            grad[idx] = (up - down) / (2 * h)
        grads.append(grad)
    return grads


def check_gradients(fn, X, gamma, beta, head, rtol=1e-6, atol=1e-7):
    """dX, dgamma, dbeta of ``fn`` in float64 against central differences of the loss."""
    def loss(X, gamma, beta):
        with autograd.train_mode():
            Y = fn(np.array(X), np.array(gamma), np.array(beta))[0]
        return float((Y.asnumpy() * head).sum())

    got = recorded(fn, [np.array(a, dtype="float64") for a in (X, gamma, beta)],
                   np.array(head, dtype="float64"))[1:]
    for name, g, w in zip(["dX", "dgamma", "dbeta"], got, numeric_grads(loss, [X, gamma, beta])):
        onp.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)


def block_diag(blocks):
    """The (G * g, G * g) matrix with the (G, g, g) ``blocks`` on its diagonal."""
    G, g, _ = blocks.shape
    M = onp.zeros((G * g, G * g))
    for i, B in enumerate(blocks):
        M[i * g:(i + 1) * g, i * g:(i + 1) * g] = B
    return M


def inv_sqrt_eigh(Sigma):
    """Sigma^{-1/2} of a symmetric positive-definite matrix, by eigendecomposition."""
    w, V = onp.linalg.eigh(Sigma)
    return V @ onp.diag(w ** -0.5) @ V.T


def initialized_lenet(make):
    """LeNet with ``make`` as its norm layers, initialised."""
    net = models.lenet(make)
    net.initialize(mx.init.Xavier())
    return net


def check_lenet_round_trip(net, make, tmp_path):
    """Two hybridized steps move the statistics; a saved and reloaded copy predicts the same."""
    net.hybridize()
    train_steps(net, n=2)
    assert not onp.allclose(net[1].moving_mean.data().asnumpy(), 0)  # statistics moved
    path = str(tmp_path / "lenet.params")
    net.save_parameters(path)
    clone = models.lenet(make)
    clone.load_parameters(path)
    X = batch((5, 1, 28, 28), 42)
    Y = clone(X).asnumpy()
    assert onp.isfinite(Y).all()
    onp.testing.assert_allclose(Y, net(X).asnumpy(), rtol=1e-5, atol=1e-6)
