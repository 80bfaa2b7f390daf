"""ZCA (group) whitening and PIT normalisation against float64 NumPy references."""

import functools
import math
import warnings

import mxnet as mx
import numpy as onp
import pytest
from helpers import batch, check_hybridized_equals_imperative, param_shape
from mxnet import autograd, np, npx
from mxnet.gluon import nn
from norm_refs import (
    EPS,
    MOMENTUM,
    TOL32,
    block_diag,
    channel_major,
    check_gradients,
    check_lenet_round_trip,
    correlated,
    initialized_lenet,
    inv_sqrt_eigh,
    recorded,
)

from d2lbn.norms.compact import LowRankWhitening
from d2lbn.norms.whiten import (
    PITNorm,
    Whitening,
    group_identity,
    inv_sqrt_newton_schulz,
    pit_norm,
    zca_whiten,
)

# Newton-Schulz steps for the value tests: on the inputs below (covariance
# eigenvalues within a factor of about 4) 10 steps converge to float64 precision
ITERS = 10


def params(shape, g, seed=1, dtype="float64"):
    """gamma, beta, moving_mean and moving_whitening, none of them trivial."""
    rng = onp.random.default_rng(seed)
    ps, C = param_shape(shape), shape[1]
    mw = onp.eye(g) + 0.1 * rng.normal(size=(C // g, g, g))
    arrays = [rng.uniform(0.5, 2, size=ps), rng.normal(size=ps), rng.normal(size=ps), mw]
    return [a.astype(dtype) for a in arrays]


def numpy_zca(X, gamma, beta, mm, mw, training=True):
    """Float64 ZCA group whitening with an exact Sigma^{-1/2}; ``(Y, moving_mean, moving_w)``."""
    C, (G, g, _) = X.shape[1], mw.shape
    Xt = channel_major(X)
    if training:
        mean = Xt.mean(axis=1)
        Xc = Xt - mean[:, None]
        W = onp.stack([inv_sqrt_eigh(Xi @ Xi.T / Xt.shape[1] + EPS * onp.eye(g))
                       for Xi in Xc.reshape(G, g, -1)])
        mm = MOMENTUM * mm + (1 - MOMENTUM) * mean.reshape(mm.shape)
        mw = MOMENTUM * mw + (1 - MOMENTUM) * W
    else:
        mean, W = mm.reshape(-1), mw
    Yt = gamma.reshape(-1, 1) * (block_diag(W) @ (Xt - mean[:, None])) + beta.reshape(-1, 1)
    return onp.moveaxis(Yt.reshape((C, X.shape[0]) + X.shape[2:]), 0, 1), mm, mw


def ours(X, gamma, beta, mm, mw, training=True, iters=ITERS, dtype="float32"):
    arrays = [np.array(a, dtype=dtype) for a in (X, gamma, beta, mm, mw)]
    with autograd.train_mode() if training else autograd.predict_mode():
        return [a.asnumpy() for a in zca_whiten(*arrays, EPS, MOMENTUM, iters=iters)]


SHAPES = [(64, 6), (8, 6, 4, 4), (6, 6, 5)]


def test_newton_schulz_converges_to_eigh():
    rng = onp.random.default_rng(0)
    Z = rng.normal(size=(3, 4, 40))
    Sigma = Z @ Z.transpose(0, 2, 1) / 40 + 0.5 * onp.eye(4)  # well conditioned
    want = onp.stack([inv_sqrt_eigh(S) for S in Sigma])
    errors = [onp.abs(inv_sqrt_newton_schulz(np.array(Sigma, dtype="float64"), T).asnumpy()
                      - want).max() for T in (2, 4, 6, 10)]
    # Each step gets closer; 10 steps reach float64 precision
    assert errors == sorted(errors, reverse=True) and errors[0] > 1e-2, errors
    assert errors[-1] < 1e-10, errors


def test_newton_schulz_stays_converged():
    """Many steps on an ill-conditioned Sigma: the result stays put, in float32 too.

    IterNorm's uncoupled P <- (3P - P^3 S) / 2 computes the same matrices in
    exact arithmetic but amplifies rounding errors once converged: here it is
    off by more than its result's size after 20 steps, even in float64.
    """
    rng = onp.random.default_rng(1)
    Q, _ = onp.linalg.qr(rng.normal(size=(16, 16)))
    Sigma = (Q * onp.geomspace(1, 0.01, 16)) @ Q.T  # condition 100
    want = inv_sqrt_eigh(Sigma)
    for dtype, tol in (("float32", 1e-5), ("float64", 1e-12)):
        got = inv_sqrt_newton_schulz(np.array(Sigma[None], dtype=dtype), 40).asnumpy()[0]
        assert onp.abs(got - want).max() < tol * onp.abs(want).max(), dtype
    trace = onp.trace(Sigma)
    P = onp.eye(16)
    for _ in range(20):
        P = 1.5 * P - 0.5 * P @ P @ P @ Sigma / trace
    assert onp.abs(P / onp.sqrt(trace) - want).max() > onp.abs(want).max()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("g", [6, 3, 2])
def test_training_matches_eigh_reference(shape, g):
    X, args = correlated(shape), params(shape, g)
    for name, got, want in zip(["Y", "moving_mean", "moving_whitening"], ours(X, *args),
                               numpy_zca(X, *args)):
        onp.testing.assert_allclose(got, want, **TOL32, err_msg=name)


@pytest.mark.parametrize("shape", [(256, 6), (16, 6, 4, 4)], ids=str)
def test_whitened_covariance_is_identity(shape):
    X = correlated(shape)
    ones, zeros = onp.ones(param_shape(shape)), onp.zeros(param_shape(shape))
    assert onp.abs(onp.corrcoef(channel_major(X)) - onp.eye(6)).max() > 0.1  # correlated
    for g in (6, 3):
        Y, _, _ = ours(X, ones, zeros, zeros, onp.zeros((6 // g, g, g)), dtype="float64")
        cov = onp.cov(channel_major(Y), bias=True)
        within = block_diag(onp.ones((6 // g, g, g))) == 1
        # eps leaves cov = Sigma (Sigma + eps I)^-1 = I - eps Sigma^-1 + ... within groups
        onp.testing.assert_allclose(cov[within], onp.eye(6)[within], atol=2e-5)
        # between groups the correlations stay (whitening each group cannot see them)
        assert g == 6 or onp.abs(cov[~within]).max() > 0.05
        onp.testing.assert_allclose(channel_major(Y).mean(axis=1), 0, atol=1e-12)


def test_groups_are_whitened_separately():
    shape = (8, 6, 3, 3)
    X, (gamma, beta, mm, mw) = correlated(shape), params(shape, 2)
    got = ours(X, gamma, beta, mm, mw)
    parts = [ours(X[:, c:c + 2], gamma[:, c:c + 2], beta[:, c:c + 2], mm[:, c:c + 2],
                  mw[c // 2:c // 2 + 1]) for c in (0, 2, 4)]
    for i, name in enumerate(["Y", "moving_mean"]):
        onp.testing.assert_allclose(got[i], onp.concatenate([p[i] for p in parts], axis=1),
                                    rtol=1e-5, atol=1e-5, err_msg=name)
    onp.testing.assert_allclose(got[2], onp.concatenate([p[2] for p in parts]), rtol=1e-5,
                                atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 5), (4, 5, 3, 3)], ids=str)
def test_group_size_one_is_batch_norm(shape):
    X, head = batch(shape, 0), batch(shape, 1)
    gamma, beta = batch(param_shape(shape), 2), batch(param_shape(shape), 3)
    mm, mw = np.zeros(param_shape(shape)), group_identity(shape[1], 1)
    got = recorded(lambda *a: zca_whiten(*a, mm, mw, EPS, MOMENTUM), [X, gamma, beta], head)
    want = recorded(lambda X, g, b: [npx.batch_norm(
        X, g.reshape(-1), b.reshape(-1), np.zeros(shape[1]), np.ones(shape[1]), eps=EPS,
        fix_gamma=False, axis=1)], [X, gamma, beta], head)
    for name, g, w in zip(["Y", "dX", "dgamma", "dbeta"], got, want):
        onp.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)
    # The moving whitening is a moving 1 / sqrt(var + eps), the moving mean BN's
    with autograd.train_mode():
        _, new_mm, new_mw = zca_whiten(X, gamma, beta, mm, mw, EPS, MOMENTUM)
    var = channel_major(X.asnumpy().astype("float64")).var(axis=1)
    onp.testing.assert_allclose(new_mw.asnumpy().ravel(),
                                MOMENTUM + (1 - MOMENTUM) / onp.sqrt(var + EPS), rtol=1e-5)
    onp.testing.assert_allclose(new_mm.asnumpy().ravel(),
                                (1 - MOMENTUM) * channel_major(X.asnumpy()).mean(axis=1),
                                rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES[:2], ids=str)
def test_prediction_uses_moving_statistics(shape):
    X, args = correlated(shape), params(shape, 3)
    Y, mm, mw = ours(X, *args, training=False)
    onp.testing.assert_array_equal(mm, args[2].astype("float32"))
    onp.testing.assert_array_equal(mw, args[3].astype("float32"))
    onp.testing.assert_allclose(Y, numpy_zca(X, *args, training=False)[0], **TOL32)
    # Each example on its own: no batch statistics involved
    onp.testing.assert_allclose(ours(X[:1], *args, training=False)[0], Y[:1], **TOL32)


@pytest.mark.parametrize("shape, g", [((5, 4), 4), ((2, 4, 2, 2), 2)], ids=str)
def test_zca_gradients_by_finite_differences(shape, g):
    X, head = correlated(shape), onp.random.default_rng(5).normal(size=shape)
    gamma, beta, mm, mw = params(shape, g)
    # Any iteration count is a differentiable function of X: a few steps suffice
    fn = lambda *a: zca_whiten(*a, np.array(mm), np.array(mw), EPS, MOMENTUM, iters=4)
    check_gradients(fn, X, gamma, beta, head)


MAKERS = [lambda c, d: Whitening(c, d, group_size=2), lambda c, d: PITNorm(c, d)]


@pytest.mark.parametrize("make", MAKERS, ids=["Whitening", "PITNorm"])
@pytest.mark.parametrize("shape", [(10, 4), (6, 4, 5, 5)], ids=str)
def test_hybridized_equals_imperative(shape, make):
    stats = ["moving_mean", "moving_whitening" if make is MAKERS[0] else "moving_var"]
    check_hybridized_equals_imperative(make, make, shape, tol=1e-5, stats=stats)


def test_block_bookkeeping_and_moving_statistics():
    wt = Whitening(6, num_dims=4, group_size=3)
    wt.initialize()
    assert wt.moving_whitening.shape == (2, 3, 3) and wt.moving_mean.shape == (1, 6, 1, 1)
    assert wt.moving_whitening.grad_req == wt.moving_mean.grad_req == "null"
    onp.testing.assert_array_equal(wt.moving_whitening.data().asnumpy(),
                                   group_identity(6, 3).asnumpy())
    assert repr(wt) == "Whitening(6, num_dims=4, group_size=3, iters=5, eps=1e-05, momentum=0.9)"
    assert Whitening(6, 2).group_size == 6  # None: all channels in one group
    X = np.array(correlated((8, 6, 3, 3)), dtype="float32")
    with autograd.record():
        wt(X)
    ones, zeros = onp.ones((1, 6, 1, 1)), onp.zeros((1, 6, 1, 1))
    start = onp.stack([onp.eye(3)] * 2)
    _, mm, _ = numpy_zca(X.asnumpy().astype("float64"), ones, zeros, zeros, start)
    # (the block's 5 Newton-Schulz steps: compare with the same steps in float64)
    _, _, mw = ours(X.asnumpy(), ones, zeros, zeros, start, iters=5, dtype="float64")
    onp.testing.assert_allclose(wt.moving_mean.data().asnumpy(), mm, rtol=1e-5, atol=1e-5)
    onp.testing.assert_allclose(wt.moving_whitening.data().asnumpy(), mw, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [lambda c, d: Whitening(c, d, group_size=2 if c % 2 == 0
                                                         else c),
                                  lambda c, d: PITNorm(c, d)], ids=["Whitening", "PITNorm"])
def test_lenet_trains_hybridized_and_round_trips(tmp_path, make):
    net = initialized_lenet(make)
    if isinstance(net[1], Whitening):  # its own initializer, not the net's Xavier
        onp.testing.assert_array_equal(net[1].moving_whitening.data().asnumpy(),
                                       group_identity(6, 2).asnumpy())
    check_lenet_round_trip(net, make, tmp_path)


def test_save_load_in_sequential(tmp_path):
    def make():
        net = nn.Sequential()
        net.add(nn.Dense(4, in_units=3), Whitening(4, num_dims=2, group_size=2), nn.Dense(2))
        return net
    net = make()
    net.initialize()
    for i in range(2):
        with autograd.record():
            net(batch((16, 3), i))
    path = str(tmp_path / "seq.params")
    net.save_parameters(path)
    clone = make()
    clone.load_parameters(path)
    for name in ("moving_mean", "moving_whitening"):
        onp.testing.assert_array_equal(getattr(clone[1], name).data().asnumpy(),
                                       getattr(net[1], name).data().asnumpy())
    X = batch((3, 3), 7)
    onp.testing.assert_array_equal(clone(X).asnumpy(), net(X).asnumpy())


@pytest.mark.parametrize("kwargs, match", [
    (dict(group_size=4), "does not divide the 6 channels"),
    (dict(group_size=0), "group_size"),
    (dict(iters=0), "iters"),
    (dict(momentum=2.0), "momentum"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Whitening(6, num_dims=2, **kwargs)


def test_bad_moving_whitening_shape():
    X = batch((4, 6))
    with pytest.raises(ValueError, match="does not divide"):
        zca_whiten(X, *[np.ones((1, 6))] * 3, np.ones((1, 4, 4)), EPS, MOMENTUM)
    with pytest.raises(ValueError, match=r"shape \(C // g, g, g\)"):
        zca_whiten(X, *[np.ones((1, 6))] * 3, np.ones((2, 2, 2)), EPS, MOMENTUM)


def test_small_batch_warns():
    wt = Whitening(4, num_dims=2)
    wt.initialize()
    with pytest.warns(RuntimeWarning, match="covariance is singular"):
        with autograd.record():
            wt(batch((3, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wt(batch((3, 4)))  # prediction: no batch covariance, no warning


erf = onp.vectorize(math.erf)


def numpy_pit(X, gamma, beta, mm, mv, training=True):
    """Float64 PIT normalisation: ``(Y, moving_mean, moving_var)``."""
    axes = (0,) + tuple(range(2, X.ndim))
    if training:
        mean, var = X.mean(axis=axes, keepdims=True), X.var(axis=axes, keepdims=True)
        mm, mv = MOMENTUM * mm + (1 - MOMENTUM) * mean, MOMENTUM * mv + (1 - MOMENTUM) * var
    else:
        mean, var = mm, mv
    Z = (X - mean) / onp.sqrt(var + EPS)
    U = (0.5 * (1 + erf(Z / math.sqrt(2))) - 0.5) * math.sqrt(12)
    return gamma * U + beta, mm, mv


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pit_matches_reference(shape, training):
    rng = onp.random.default_rng(2)
    ps = param_shape(shape)
    args = [correlated(shape), rng.uniform(0.5, 2, size=ps), rng.normal(size=ps),
            rng.normal(size=ps), rng.uniform(0.5, 2, size=ps)]
    with autograd.train_mode() if training else autograd.predict_mode():
        got = pit_norm(*[np.array(a, dtype="float32") for a in args], EPS, MOMENTUM)
    for name, g, w in zip(["Y", "moving_mean", "moving_var"], got,
                          numpy_pit(*args, training=training)):
        onp.testing.assert_allclose(g.asnumpy(), w, **TOL32, err_msg=name)


def test_pit_output_is_centred_uniform():
    X = np.array(onp.random.default_rng(3).normal(4, 2, size=(64, 3, 16, 16)), dtype="float32")
    ones, zeros = np.ones((1, 3, 1, 1)), np.zeros((1, 3, 1, 1))
    with autograd.train_mode():
        U = channel_major(pit_norm(X, ones, zeros, zeros, ones, EPS, MOMENTUM)[0].asnumpy())
    # Uniform on [-sqrt 3, sqrt 3]: mean 0, variance 1, a flat histogram
    assert onp.abs(U).max() <= math.sqrt(3) + 1e-6
    # (tolerances: about 4 standard errors of 16384 values)
    onp.testing.assert_allclose(U.mean(axis=1), 0, atol=0.02)
    onp.testing.assert_allclose(U.var(axis=1), 1, atol=0.03)
    hist = onp.histogram(U[0], bins=10, range=(-math.sqrt(3), math.sqrt(3)))[0]
    onp.testing.assert_allclose(hist / U.shape[1], 0.1, atol=0.01)


@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 2, 2)], ids=str)
def test_pit_gradients_by_finite_differences(shape):
    rng = onp.random.default_rng(4)
    ps = param_shape(shape)
    X, gamma, beta = correlated(shape), rng.uniform(0.5, 2, size=ps), rng.normal(size=ps)
    head = rng.normal(size=shape)
    fn = lambda *a: pit_norm(*a, np.zeros(ps, dtype="float64"), np.ones(ps, dtype="float64"),
                             EPS, MOMENTUM)
    check_gradients(fn, X, gamma, beta, head)



@pytest.mark.parametrize("make", [functools.partial(Whitening, 4, 4, group_size=2),
                                  functools.partial(PITNorm, 4, 4),
                                  functools.partial(LowRankWhitening, 4, 4)],
                         ids=["Whitening", "PITNorm", "LowRankWhitening"])
def test_each_device_keeps_its_own_moving_state(make):
    # Data parallelism as train runs it: each device's forward in turn. Given
    # the same shard, each device's copy must move as in one-device training; a
    # layer that wrote every copy would chain the second update on the first
    X = correlated((6, 4, 3, 3), seed=3).astype("float32")
    ctxs = [mx.cpu(0), mx.cpu(1)]
    start, one, two = make(), make(), make()
    start.initialize()
    one.initialize()
    two.initialize(ctx=ctxs)
    with autograd.record():
        one(np.array(X))
        for ctx in ctxs:
            two(np.array(X, ctx=ctx))
    for name in one.stats:
        want = getattr(one, name).data().asnumpy()
        assert not onp.allclose(want, getattr(start, name).data().asnumpy())  # it moved
        for copy in getattr(two, name).list_data():
            # the same float32 operations on the same values: equal bit for bit
            onp.testing.assert_array_equal(copy.asnumpy(), want)
