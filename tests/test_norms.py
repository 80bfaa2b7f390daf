"""Layer, group and instance norm: against NumPy float64, MXNet's operators, and each other."""

import mxnet as mx
import numpy as onp
import pytest
from mxnet import autograd, np, npx
from mxnet.gluon import nn

from d2lbn import models
from d2lbn.norms import GroupNorm, InstanceNorm, LayerNorm, group_norm, instance_norm, layer_norm

EPS = 1e-5
TOL = dict(rtol=1e-4, atol=1e-4)


def draw(shape, seed, loc=2.0, scale=3.0):
    return onp.random.default_rng(seed).normal(loc, scale, size=shape)


def affine(C, ndim, seed):
    """A per-channel gamma and beta, shape (1, C, 1, ...), far from 1 and 0."""
    shape = (1, C) + (1,) * (ndim - 2)
    return draw(shape, seed, 1.0, 0.5), draw(shape, seed + 1, 0.0, 1.0)


def reference(X, gamma, beta, head, rows):
    """NumPy float64 forward and backward, normalising each row of ``X.reshape(rows)``."""
    Xr = X.reshape(rows)
    mean = Xr.mean(axis=-1, keepdims=True)
    std = onp.sqrt(Xr.var(axis=-1, keepdims=True) + EPS)
    X_hat = ((Xr - mean) / std).reshape(X.shape)
    # d/dX of (x - mean) / std over a row: the textbook three-term formula
    d_hat = (head * gamma).reshape(rows)
    X_hat_r = X_hat.reshape(rows)
    dX = (d_hat - d_hat.mean(-1, keepdims=True)
          - X_hat_r * (d_hat * X_hat_r).mean(-1, keepdims=True)) / std
    others = tuple(a for a in range(X.ndim) if a != 1)
    return (gamma * X_hat + beta, dX.reshape(X.shape),
            (head * X_hat).sum(axis=others, keepdims=True), head.sum(axis=others, keepdims=True))


def rows_of(kind, shape, num_groups=None):
    """The reshape that puts each normalised set of values on one row."""
    N, C = shape[:2]
    return {"layer": (N, -1), "group": (N, num_groups, -1), "instance": (N, C, -1)}[kind]


def run(fn, X, gamma, beta, head, **kwargs):
    """Our function on float32 copies, recorded; return Y, dX, dgamma, dbeta as NumPy."""
    X, gamma, beta = (np.array(a, dtype="float32") for a in (X, gamma, beta))
    for a in (X, gamma, beta):
        a.attach_grad()
    with autograd.record():
        Y = fn(X, gamma, beta, eps=EPS, **kwargs)
    Y.backward(np.array(head, dtype="float32"))
    return [a.asnumpy() for a in (Y, X.grad, gamma.grad, beta.grad)]


def assert_all_close(actual, expected, **tol):
    for name, a, e in zip(("Y", "dX", "dgamma", "dbeta"), actual, expected):
        onp.testing.assert_allclose(onp.reshape(a, onp.shape(e)), e, err_msg=name,
                                    **(tol or TOL))


CASES = ([("layer", s, None) for s in [(5, 7), (4, 3, 6), (4, 3, 5, 6), (3, 2, 3, 4, 5)]]
         + [("group", s, g) for s, g in [((5, 8), 2), ((5, 8), 8), ((4, 6, 7), 3),
                                          ((4, 6, 5, 5), 1), ((4, 6, 5, 5), 2),
                                          ((4, 6, 5, 5), 6), ((2, 4, 3, 3, 3), 2)]]
         + [("instance", s, None) for s in [(4, 3, 6), (4, 3, 5, 6), (3, 2, 3, 4, 5)]])
FUNCTIONS = {"layer": layer_norm, "group": group_norm, "instance": instance_norm}


@pytest.mark.parametrize("kind, shape, num_groups", CASES, ids=str)
def test_matches_numpy_float64(kind, shape, num_groups):
    X, head = draw(shape, 0), draw(shape, 1)
    gamma, beta = affine(shape[1], len(shape), 2)
    kwargs = {"num_groups": num_groups} if kind == "group" else {}
    got = run(FUNCTIONS[kind], X, gamma, beta, head, **kwargs)
    assert_all_close(got, reference(X, gamma, beta, head, rows_of(kind, shape, num_groups)))


def mxnet_reference(op, X, gamma, beta, head):
    """Y and gradients of ``op(X, gamma, beta)``, all in MXNet's own operators."""
    X, gamma, beta = (np.array(a, dtype="float32") for a in (X, gamma, beta))
    for a in (X, gamma, beta):
        a.attach_grad()
    with autograd.record():
        Y = op(X, gamma, beta)
    Y.backward(np.array(head, dtype="float32"))
    return [a.asnumpy() for a in (Y, X.grad, gamma.grad, beta.grad)]


@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 5, 6)], ids=str)
def test_layer_norm_matches_npx_layer_norm(shape):
    X, head = draw(shape, 0), draw(shape, 1)
    gamma, beta = affine(shape[1], len(shape), 2)
    N = shape[0]

    def op(X, gamma, beta):
        # npx.layer_norm normalises one axis: flatten each example onto it, with
        # gamma=1 and beta=0, then add our per-channel affine map
        ones, zeros = np.ones(X[0].size), np.zeros(X[0].size)
        X_hat = npx.layer_norm(X.reshape(N, -1), ones, zeros, axis=-1, eps=EPS)
        return gamma * X_hat.reshape(X.shape) + beta

    expected = mxnet_reference(op, X, gamma, beta, head)
    assert_all_close(run(layer_norm, X, gamma, beta, head), expected)


def test_layer_norm_on_vectors_is_npx_layer_norm_itself():
    # On (N, C) both normalise over the features and scale each one: same op
    X, head = draw((6, 9), 0), draw((6, 9), 1)
    gamma, beta = affine(9, 2, 2)
    expected = mxnet_reference(
        lambda X, g, b: npx.layer_norm(X, g.reshape(-1), b.reshape(-1), axis=-1, eps=EPS),
        X, gamma, beta, head)
    assert_all_close(run(layer_norm, X, gamma, beta, head), expected)


def nd_reference(op, X, gamma, beta, head):
    """Like ``mxnet_reference`` for a legacy ``mx.nd`` operator, on legacy arrays."""
    X, gamma, beta = (mx.nd.array(a, dtype="float32") for a in (X, gamma, beta))
    for a in (X, gamma, beta):
        a.attach_grad()
    with autograd.record():
        Y = op(X, gamma, beta)
    Y.backward(mx.nd.array(head, dtype="float32"))
    return [a.asnumpy() for a in (Y, X.grad, gamma.grad, beta.grad)]


@pytest.mark.parametrize("shape, num_groups", [((4, 6, 5, 5), 2), ((4, 6, 7), 3),
                                               ((4, 6, 5, 5), 1), ((4, 6, 5, 5), 6)], ids=str)
def test_group_norm_matches_nd_group_norm(shape, num_groups):
    X, head = draw(shape, 0), draw(shape, 1)
    gamma, beta = affine(shape[1], len(shape), 2)

    def op(X, gamma, beta):
        # nd.GroupNorm's gamma and beta are per group: pass 1 and 0, then add
        # our per-channel affine map
        G = num_groups
        X_hat = mx.nd.GroupNorm(X, mx.nd.ones(G), mx.nd.zeros(G), num_groups=G, eps=EPS)
        return mx.nd.broadcast_add(mx.nd.broadcast_mul(gamma, X_hat), beta)

    expected = nd_reference(op, X, gamma, beta, head)
    assert_all_close(run(group_norm, X, gamma, beta, head, num_groups=num_groups), expected)


def test_nd_group_norm_learns_one_gamma_per_group():
    # The semantic difference, spelled out: with gamma constant within each
    # group ours equals nd.GroupNorm, and its per-group gradients are our
    # per-channel ones summed over each group's channels
    shape, G = (4, 6, 5, 5), 3
    X, head = draw(shape, 0), draw(shape, 1)
    gamma_g, beta_g = draw((G,), 2, 1.0, 0.5), draw((G,), 3)
    per_channel = [onp.repeat(v, 6 // G).reshape(1, 6, 1, 1) for v in (gamma_g, beta_g)]
    ours = run(group_norm, X, *per_channel, head, num_groups=G)
    theirs = nd_reference(lambda X, g, b: mx.nd.GroupNorm(X, g, b, num_groups=G, eps=EPS),
                          X, gamma_g, beta_g, head)
    ours[2:] = [d.reshape(G, -1).sum(axis=1) for d in ours[2:]]
    assert_all_close(ours, theirs)
    with pytest.raises(mx.MXNetError):
        # and it refuses per-channel gamma
        mx.nd.GroupNorm(mx.nd.array(X), mx.nd.ones(6), mx.nd.zeros(6), num_groups=G).wait_to_read()


@pytest.mark.parametrize("shape", [(4, 3, 6), (4, 3, 5, 6), (3, 2, 3, 4, 5)], ids=str)
def test_instance_norm_matches_nd_instance_norm(shape):
    X, head = draw(shape, 0), draw(shape, 1)
    gamma, beta = affine(shape[1], len(shape), 2)
    # nd.InstanceNorm takes gamma and beta of shape (C,) and defaults to eps=1e-3
    expected = nd_reference(
        lambda X, g, b: mx.nd.InstanceNorm(X, g.reshape(-1), b.reshape(-1), eps=EPS),
        X, gamma, beta, head)
    assert_all_close(run(instance_norm, X, gamma, beta, head), expected)


def test_nd_instance_norm_puts_eps_under_the_root():
    # Its docstring writes sqrt(var) + eps; with a large eps the two differ
    X = draw((2, 3, 4), 0)
    ours = instance_norm(np.array(X), np.ones((1, 3, 1)), np.zeros((1, 3, 1)), eps=0.5)
    theirs = mx.nd.InstanceNorm(mx.nd.array(X), mx.nd.ones(3), mx.nd.zeros(3), eps=0.5)
    onp.testing.assert_allclose(ours.asnumpy(), theirs.asnumpy(), **TOL)


@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (5, 6)], ids=str)
def test_group_norm_extremes_are_layer_and_instance_norm(shape):
    X, head = draw(shape, 0), draw(shape, 1)
    gamma, beta = affine(shape[1], len(shape), 2)
    one = run(group_norm, X, gamma, beta, head, num_groups=1)
    assert_all_close(one, run(layer_norm, X, gamma, beta, head), rtol=1e-5, atol=1e-5)
    every = run(group_norm, X, gamma, beta, head, num_groups=shape[1])
    if len(shape) > 2:
        assert_all_close(every, run(instance_norm, X, gamma, beta, head), rtol=1e-5, atol=1e-5)
    else:
        # One channel per group on (N, C): a group of one value, output beta
        onp.testing.assert_allclose(every[0], onp.broadcast_to(beta, shape), atol=1e-6)


BLOCKS = {
    "layer": lambda c, d: LayerNorm(c, num_dims=d),
    "group": lambda c, d: GroupNorm(c, num_dims=d, num_groups=2),
    "instance": lambda c, d: InstanceNorm(c, num_dims=d),
}
BLOCK_CASES = [(k, s) for k in BLOCKS for s in [(6, 4, 5, 5), (6, 4, 7), (7, 4)]
               if not (k == "instance" and len(s) == 2)]


def make(kind, shape, hybridize=False):
    layer = BLOCKS[kind](shape[1], len(shape))
    layer.initialize()
    gamma, beta = affine(shape[1], len(shape), 2)
    layer.gamma.set_data(np.array(gamma, dtype="float32"))
    layer.beta.set_data(np.array(beta, dtype="float32"))
    if hybridize:
        layer.hybridize()
    return layer


def step(layer, X, head, train_mode=True):
    """One recorded forward and backward; return output and gradients as NumPy."""
    X = np.array(X, dtype="float32")
    X.attach_grad()
    with autograd.record(train_mode=train_mode):
        Y = layer(X)
    Y.backward(np.array(head, dtype="float32"))
    return [a.asnumpy() for a in (Y, X.grad, layer.gamma.grad(), layer.beta.grad())]


@pytest.mark.parametrize("kind, shape", BLOCK_CASES, ids=str)
def test_block_matches_function_and_parameters(kind, shape):
    layer = make(kind, shape)
    assert layer.gamma.shape == layer.beta.shape == (1, shape[1]) + (1,) * (len(shape) - 2)
    X, head = draw(shape, 0), draw(shape, 1)
    gamma, beta = affine(shape[1], len(shape), 2)
    kwargs = {"num_groups": 2} if kind == "group" else {}
    assert_all_close(step(layer, X, head), run(FUNCTIONS[kind], X, gamma, beta, head, **kwargs),
                     rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("kind, shape", BLOCK_CASES, ids=str)
def test_same_in_training_and_prediction(kind, shape, hybridize):
    layer = make(kind, shape, hybridize)
    X, head = draw(shape, 0), draw(shape, 1)
    train = step(layer, X, head, train_mode=True)
    assert_all_close(step(layer, X, head, train_mode=False), train, rtol=0, atol=0)
    # and outside any recording, the plain prediction path
    onp.testing.assert_array_equal(layer(np.array(X, dtype="float32")).asnumpy(), train[0])


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("kind, shape", BLOCK_CASES, ids=str)
def test_no_batch_dependence(kind, shape, hybridize):
    layer = make(kind, shape, hybridize)
    X = draw(shape, 0)
    # Replace every other example (by wildly different values) and shrink the batch:
    # the first example's output must not move
    other = X.copy()
    other[1:] = draw((shape[0] - 1,) + shape[1:], 5, loc=-40.0, scale=20.0)
    with autograd.record(train_mode=True):
        outputs = [layer(np.array(a, dtype="float32"))[0].asnumpy()
                   for a in (X, other, X[:1], X[:3])]
    for Y0 in outputs[1:]:
        onp.testing.assert_allclose(Y0, outputs[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind, shape", BLOCK_CASES, ids=str)
def test_hybridized_equals_imperative(kind, shape):
    plain, hybrid = make(kind, shape), make(kind, shape, hybridize=True)
    # Two batch sizes: the compiled graph must not have baked in the first shape
    for i, n in enumerate((shape[0], shape[0] - 3)):
        X, head = draw((n,) + shape[1:], i), draw((n,) + shape[1:], 10 + i)
        assert_all_close(step(hybrid, X, head), step(plain, X, head), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", BLOCKS)
def test_folds_into_a_hybridized_hybrid_sequential(kind):
    # No state to store back, so unlike HybridBatchNorm a parent graph may hold it
    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, kernel_size=3), BLOCKS[kind](4, 4))
    net.initialize()
    X = np.array(draw((3, 2, 6, 6), 0), dtype="float32")
    expected = net(X).asnumpy()
    net.hybridize()
    onp.testing.assert_allclose(net(X).asnumpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make_bad", [
    lambda: GroupNorm(6, num_dims=4, num_groups=4),
    lambda: GroupNorm(6, num_dims=4, num_groups=0),
    lambda: InstanceNorm(6, num_dims=2),
    lambda: LayerNorm(6, num_dims=6),
    lambda: LayerNorm(0, num_dims=2),
    lambda: LayerNorm(6, num_dims=2, eps=0.0),
], ids=["groups-not-dividing", "zero-groups", "instance-on-vectors", "six-dims",
        "no-features", "zero-eps"])
def test_bad_construction_raises(make_bad):
    with pytest.raises(ValueError):
        make_bad()


@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("shape", [(4, 5, 3, 3), (4, 6, 3), (4, 6, 3, 3, 3)], ids=str)
def test_bad_input_raises(kind, shape):
    # The layer expects (N, 6, H, W): wrong channel count, wrong number of axes
    layer = BLOCKS[kind](6, 4)
    layer.initialize()
    with pytest.raises(ValueError):
        layer(np.ones(shape))


@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("shape", [(0, 6, 3, 3), (4, 6, 0, 3)], ids=str)
def test_empty_input_raises(kind, shape):
    # (MXNet's own error, before: a shape mismatch deep in the reshape)
    layer = BLOCKS[kind](6, 4)
    layer.initialize()
    with pytest.raises(ValueError, match="empty input"):
        layer(np.ones(shape))


def test_bad_input_to_functions_raises():
    X = np.ones((4, 6, 3, 3))
    gamma, beta = np.ones((1, 6, 1, 1)), np.zeros((1, 6, 1, 1))
    with pytest.raises(ValueError, match="does not divide"):
        group_norm(X, gamma, beta, num_groups=4, eps=EPS)
    with pytest.raises(ValueError, match="positions"):
        instance_norm(np.ones((4, 6)), gamma[:, :, 0, 0], beta[:, :, 0, 0], eps=EPS)
    with pytest.raises(ValueError):
        layer_norm(np.ones((4,)), np.ones((1,)), np.zeros((1,)), eps=EPS)


def test_repr():
    assert repr(GroupNorm(6, num_dims=4, num_groups=3)) == \
        "GroupNorm(6, num_dims=4, num_groups=3, eps=1e-05)"
    assert repr(LayerNorm(6, num_dims=2)) == "LayerNorm(6, num_dims=2, eps=1e-05)"


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("kind", BLOCKS)
def test_inside_lenet(kind, hybridize):
    # Instance norm has no positions to average over after the dense layers
    net = models.lenet(norm=BLOCKS[kind], norm_dense=kind != "instance")
    net.initialize(mx.init.Xavier())
    if hybridize:
        net.hybridize()
    norms = [layer for layer in net if isinstance(layer, (LayerNorm, GroupNorm, InstanceNorm))]
    assert len(norms) == (2 if kind == "instance" else 4)
    X, y = np.random.normal(size=(8, 1, 28, 28)), np.arange(8) % 10
    loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    with autograd.record():
        l = loss(net(X), y)
    l.backward()
    assert l.shape == (8,) and onp.isfinite(l.asnumpy()).all()
    for layer in norms:
        grad = layer.gamma.grad().asnumpy()
        assert onp.isfinite(grad).all() and onp.abs(grad).sum() > 0
