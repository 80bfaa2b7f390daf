"""Low-rank-plus-diagonal, Monarch and circulant whitening against float64 NumPy references."""

import math

import mxnet as mx
import numpy as onp
import pytest
from helpers import (
    check_hybridized_equals_imperative,
    check_refused,
    numpy_batch_norm,
    param_shape,
)
from mxnet import autograd, np
from norm_refs import (
    EPS,
    MOMENTUM,
    TOL32,
    block_diag,
    channel_major,
    check_gradients,
    check_lenet_round_trip,
    correlated,
    from_channel_major,
    initialized_lenet,
    inv_sqrt_eigh,
)

from d2lbn.norms.compact import (
    CirculantWhitening,
    LowRankWhitening,
    MonarchWhitening,
    circulant_factors,
    circulant_matrix,
    circulant_whiten,
    cost,
    factor_init,
    lowrank_whiten,
    monarch_blocks,
    monarch_whiten,
    stride_permutation,
    woodbury_whitening,
)

SHAPES = [(64, 6), (8, 6, 4, 4), (6, 6, 5)]


def moments(X):
    """Channel means and the biased covariance, float64."""
    Xt = channel_major(X)
    mean = Xt.mean(axis=1)
    Xc = Xt - mean[:, None]
    return Xt, mean, Xc @ Xc.T / Xt.shape[1]


def whitened(X, gamma, beta, mean, W):
    """``diag(gamma) W (X - mean) + beta`` in ``X``'s layout."""
    Yt = gamma.reshape(-1, 1) * (W @ (channel_major(X) - mean[:, None])) + beta.reshape(-1, 1)
    return from_channel_major(Yt, X.shape)


def base_params(shape, seed=1):
    rng = onp.random.default_rng(seed)
    ps = param_shape(shape)
    return rng.uniform(0.5, 2, size=ps), rng.normal(size=ps), rng.normal(size=ps)


def mx_run(fn, arrays, training, dtype="float32", **kwargs):
    arrays = [np.array(a, dtype=dtype) for a in arrays]
    with autograd.train_mode() if training else autograd.predict_mode():
        return [a.asnumpy() for a in fn(*arrays, EPS, MOMENTUM, **kwargs)]


def check_all(got, want, names, tol=TOL32):
    for name, g, w in zip(names, got, want):
        onp.testing.assert_allclose(g, w, **tol, err_msg=name)


# -- diagonal plus low rank -------------------------------------------------------------------

def numpy_factor(Sigma, start, power_iters):
    """Float64 deflated power iteration with Nystrom columns: ``(d, U)``."""
    S, columns = Sigma.copy(), []
    for v in start.T:
        v = v / onp.linalg.norm(v)
        for _ in range(power_iters):
            v = S @ v
            v = v / onp.linalg.norm(v)
        u = S @ v / onp.sqrt(v @ S @ v + EPS)
        S = S - onp.outer(u, u)
        columns.append(u)
    U = onp.stack(columns, axis=1)
    return onp.maximum(onp.diag(Sigma) - (U ** 2).sum(axis=1), 0), U


def numpy_woodbury(d, U):
    """Float64 rank-one updates of ``diag(d)^{-1/2}``, the same steps as the library's."""
    W = onp.diag(d ** -0.5)
    for u in U.T:
        w = W @ u
        s = w @ w
        g = ((1 + s) ** -0.5 - 1) / s
        W = W + g * onp.outer(w, w @ W)
    return W


def numpy_lowrank(X, gamma, beta, mm, md, mf, power_iters, training=True):
    """Float64 low-rank whitening: ``(Y, moving_mean, moving_diag, moving_factor)``."""
    if training:
        _, mean, Sigma = moments(X)
        d, U = numpy_factor(Sigma, mf, power_iters)
        mm = MOMENTUM * mm + (1 - MOMENTUM) * mean.reshape(mm.shape)
        md = MOMENTUM * md + (1 - MOMENTUM) * d.reshape(md.shape)
        mf = MOMENTUM * mf + (1 - MOMENTUM) * U
    else:
        mean, d, U = mm.reshape(-1), md.reshape(-1), mf
    return whitened(X, gamma, beta, mean, numpy_woodbury(d + EPS, U)), mm, md, mf


def lowrank_params(shape, k, seed=1):
    rng = onp.random.default_rng(seed + 10)
    ps = param_shape(shape)
    return list(base_params(shape, seed)) + [rng.uniform(0.5, 2, size=ps),
                                             rng.normal(size=(shape[1], k))]


LOWRANK_NAMES = ["Y", "moving_mean", "moving_diag", "moving_factor"]


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("k, power_iters, dtype", [(1, 0, "float32"), (2, 2, "float32"),
                                                   (4, 3, "float32"), (6, 3, "float64")],
                         ids=str)
def test_lowrank_matches_reference(shape, k, power_iters, dtype, training):
    # (float64 for full rank: D is then about eps, and the rank-one updates of
    # D^{-1/2} lose about log10(lambda / D) digits, all of float32's accuracy)
    X, args = correlated(shape), lowrank_params(shape, k)
    got = mx_run(lowrank_whiten, [X] + args, training, dtype=dtype, power_iters=power_iters)
    want = numpy_lowrank(X, *args, power_iters, training=training)
    check_all(got, want, LOWRANK_NAMES, tol=TOL32 if dtype == "float32" else
              dict(rtol=1e-9, atol=1e-9))
    if not training:  # the moving statistics pass through unchanged
        for g, w in zip(got[1:], args[2:]):
            onp.testing.assert_array_equal(g, w.astype(dtype))


@pytest.mark.parametrize("k", [1, 3, 8])
def test_woodbury_whitening_whitens_the_model_covariance(k):
    rng = onp.random.default_rng(k)
    C = 8
    d, U = rng.uniform(0.1, 2, size=C), rng.normal(size=(C, k)) * rng.uniform(0.1, 3, size=k)
    W = woodbury_whitening(mx, np.array(d), np.array(U), k).asnumpy()
    Sigma = onp.diag(d) + U @ U.T
    onp.testing.assert_allclose(W @ Sigma @ W.T, onp.eye(C), atol=1e-12)
    # W^T W is the Woodbury inverse D^-1 - D^-1 U (I + U^T D^-1 U)^-1 U^T D^-1
    Di = onp.diag(1 / d)
    woodbury = Di - Di @ U @ onp.linalg.inv(onp.eye(k) + U.T @ Di @ U) @ U.T @ Di
    onp.testing.assert_allclose(W.T @ W, woodbury, atol=1e-10)
    if k == 1:  # one update is (I + w w^T)^{-1/2} D^{-1/2}, w = D^{-1/2} u
        w = U[:, 0] / onp.sqrt(d)
        onp.testing.assert_allclose(W, inv_sqrt_eigh(onp.eye(C) + onp.outer(w, w))
                                    @ onp.diag(d ** -0.5), atol=1e-12)


def test_woodbury_whitening_is_zca_for_orthogonal_factors():
    rng = onp.random.default_rng(0)
    Q, _ = onp.linalg.qr(rng.normal(size=(7, 3)))
    U = Q * onp.array([3.0, 0.5, 1e-3])  # (1e-3: s = 1e-6, where a naive g would cancel)
    W = woodbury_whitening(mx, np.full((7,), 0.7, dtype="float64"), np.array(U), 3).asnumpy()
    onp.testing.assert_allclose(W, inv_sqrt_eigh(0.7 * onp.eye(7) + U @ U.T), atol=1e-12)


def test_factor_converges_to_top_eigenvectors():
    rng = onp.random.default_rng(3)
    C, k = 10, 3
    V, _ = onp.linalg.qr(rng.normal(size=(C, C)))
    lam = onp.array([9.0, 5.0, 3.0] + [1.0] * (C - 3))  # a gap after the third
    Z = rng.normal(size=(C, 4000))
    Z = inv_sqrt_eigh(onp.cov(Z, bias=True)) @ (Z - Z.mean(axis=1, keepdims=True))
    X = from_channel_major(V @ onp.diag(onp.sqrt(lam)) @ Z + 2.0, (4000, C))
    ones, zeros = onp.ones((1, C)), onp.zeros((1, C))
    start = factor_init(C, k)
    _, _, md, mf = mx_run(lowrank_whiten, [X, ones, zeros, zeros, zeros, start], True,
                          dtype="float64", power_iters=60)
    # (undo the moving average: the diagonal starts from 0, the factor from start)
    d, U = md.ravel() / (1 - MOMENTUM), (mf - MOMENTUM * start) / (1 - MOMENTUM)
    top = V[:, :k] * lam[:k] @ V[:, :k].T
    # Nystrom's eps shrinks u u^T by lambda / (lambda + eps)
    onp.testing.assert_allclose(U @ U.T, top, atol=1e-5)
    onp.testing.assert_allclose(d, onp.diag(V * lam @ V.T - top), atol=1e-5)


@pytest.mark.parametrize("shape", [(512, 6), (32, 6, 4, 4)], ids=str)
def test_full_rank_whitens_the_batch(shape):
    X = correlated(shape)
    ones, zeros = onp.ones(param_shape(shape)), onp.zeros(param_shape(shape))
    Y = mx_run(lowrank_whiten, [X, ones, zeros, zeros, ones, factor_init(6, 6)], True,
               dtype="float64", power_iters=40)[0]
    onp.testing.assert_allclose(onp.cov(channel_major(Y), bias=True), onp.eye(6), atol=1e-4)
    # rank 1 leaves correlations that the diagonal cannot see
    Y1 = mx_run(lowrank_whiten, [X, ones, zeros, zeros, ones, factor_init(6, 1)], True,
                dtype="float64", power_iters=40)[0]
    assert onp.abs(onp.cov(channel_major(Y1), bias=True) - onp.eye(6)).max() > 0.05


@pytest.mark.parametrize("shape, k", [((5, 4), 2), ((2, 4, 2, 2), 1), ((6, 3), 2)], ids=str)
def test_lowrank_gradients_by_finite_differences(shape, k):
    X, head = correlated(shape), onp.random.default_rng(5).normal(size=shape)
    gamma, beta, mm, md, mf = lowrank_params(shape, k)
    fn = lambda *a: lowrank_whiten(*a, np.array(mm), np.array(md), np.array(mf), EPS,  # noqa: E731
                                   MOMENTUM, power_iters=2)
    check_gradients(fn, X, gamma, beta, head, rtol=1e-5, atol=1e-6)


def test_lowrank_rejects_bad_state():
    X, p = np.array(correlated((8, 6))), np.ones((1, 6))
    with pytest.raises(ValueError, match=r"shape \(C, k\)"):
        lowrank_whiten(X, p, p, p, p, np.ones((6, 7)), EPS, MOMENTUM)
    with pytest.raises(ValueError, match="moving_diag"):
        lowrank_whiten(X, p, p, p, np.ones((6,)), np.ones((6, 2)), EPS, MOMENTUM)
    for kwargs, match in [(dict(rank=0), "rank"), (dict(rank=7), "rank"),
                          (dict(power_iters=-1), "power_iters")]:
        with pytest.raises(ValueError, match=match):
            LowRankWhitening(6, 2, **kwargs)


# -- Monarch ----------------------------------------------------------------------------------

def numpy_permutation(m, n):
    P = onp.zeros((m * n, m * n))
    for a in range(m):
        for b in range(n):
            P[b * m + a, a * n + b] = 1
    return P


def numpy_monarch_blocks(Sigma, m, n):
    """Float64 R and L blocks with exact inverse square roots."""
    C, P = m * n, numpy_permutation(m, n)
    R = onp.stack([inv_sqrt_eigh(Sigma[a * n:(a + 1) * n, a * n:(a + 1) * n] + EPS * onp.eye(n))
                   for a in range(m)])
    S = P @ block_diag(R) @ Sigma @ block_diag(R).T @ P.T
    L = onp.stack([inv_sqrt_eigh(S[b * m:(b + 1) * m, b * m:(b + 1) * m] + EPS * onp.eye(m))
                   for b in range(n)])
    assert S.shape == (C, C)
    return R, L


def numpy_monarch(X, gamma, beta, mm, mr, ml, training=True):
    """Float64 Monarch whitening: ``(Y, moving_mean, moving_right, moving_left)``."""
    (m, n, _), P = mr.shape, numpy_permutation(*mr.shape[:2])
    if training:
        _, mean, Sigma = moments(X)
        R, L = numpy_monarch_blocks(Sigma, m, n)
        mm = MOMENTUM * mm + (1 - MOMENTUM) * mean.reshape(mm.shape)
        mr, ml = MOMENTUM * mr + (1 - MOMENTUM) * R, MOMENTUM * ml + (1 - MOMENTUM) * L
    else:
        mean, R, L = mm.reshape(-1), mr, ml
    W = P.T @ block_diag(L) @ P @ block_diag(R)
    return whitened(X, gamma, beta, mean, W), mm, mr, ml


def monarch_params(shape, m, seed=1):
    rng = onp.random.default_rng(seed + 20)
    n = shape[1] // m
    return list(base_params(shape, seed)) + [onp.eye(n) + 0.1 * rng.normal(size=(m, n, n)),
                                             onp.eye(m) + 0.1 * rng.normal(size=(n, m, m))]


MONARCH_NAMES = ["Y", "moving_mean", "moving_right", "moving_left"]
# Newton-Schulz steps that converge to float64 precision on these inputs
ITERS = 14


def test_blocks_and_permutation():
    assert [monarch_blocks(C) for C in (6, 16, 120, 84, 7, 1)] == [
        (2, 3), (4, 4), (10, 12), (7, 12), (1, 7), (1, 1)]
    for m, n in [(2, 3), (3, 2), (4, 4)]:
        x = onp.arange(m * n, dtype="float64")
        P = stride_permutation(m, n, dtype="float64").asnumpy()
        onp.testing.assert_array_equal(P, numpy_permutation(m, n))
        # channel a n + b goes to b m + a: the (m, n) grid transposed
        onp.testing.assert_array_equal(P @ x, x.reshape(m, n).T.ravel())


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("m", [2, 3, 1, 6])
def test_monarch_matches_reference(shape, m, training):
    X, args = correlated(shape), monarch_params(shape, m)
    got = mx_run(monarch_whiten, [X] + args, training, iters=ITERS)
    check_all(got, numpy_monarch(X, *args, training=training), MONARCH_NAMES)


def test_monarch_whitens_kronecker_covariances_exactly():
    rng = onp.random.default_rng(7)
    m, n = 3, 4
    A, B = [(lambda Q, e: Q @ onp.diag(e) @ Q.T)(onp.linalg.qr(rng.normal(size=(s, s)))[0],
                                                  rng.uniform(0.5, 3, size=s)) for s in (m, n)]
    Sigma = onp.kron(A, B)
    Z = rng.normal(size=(m * n, 600))
    Z = inv_sqrt_eigh(onp.cov(Z, bias=True)) @ (Z - Z.mean(axis=1, keepdims=True))
    X = from_channel_major(onp.linalg.cholesky(Sigma) @ Z, (600, m * n))
    ones, zeros = onp.ones((1, m * n)), onp.zeros((1, m * n))
    mr, ml = onp.zeros((m, n, n)), onp.zeros((n, m, m))
    Y = mx_run(monarch_whiten, [X, ones, zeros, zeros, mr, ml], True, dtype="float64",
               iters=30)[0]
    onp.testing.assert_allclose(onp.cov(channel_major(Y), bias=True), onp.eye(m * n), atol=1e-4)
    # Not so for a covariance without that structure: only L's groups come out white
    X = correlated((600, 12))
    Y = mx_run(monarch_whiten, [X, ones, zeros, zeros, mr, ml], True, dtype="float64",
               iters=30)[0]
    cov = onp.cov(channel_major(Y), bias=True)
    assert onp.abs(cov - onp.eye(12)).max() > 0.05
    for b in range(n):  # channels b, n + b, 2n + b: one of L's blocks
        onp.testing.assert_allclose(cov[b::n, b::n], onp.eye(m), atol=1e-4)


@pytest.mark.parametrize("shape, m", [((5, 4), 2), ((2, 4, 2, 2), 2)], ids=str)
def test_monarch_gradients_by_finite_differences(shape, m):
    X, head = correlated(shape), onp.random.default_rng(5).normal(size=shape)
    gamma, beta, mm, mr, ml = monarch_params(shape, m)
    fn = lambda *a: monarch_whiten(*a, np.array(mm), np.array(mr), np.array(ml), EPS,  # noqa: E731
                                   MOMENTUM, iters=4)
    check_gradients(fn, X, gamma, beta, head, rtol=1e-5, atol=1e-6)


def test_monarch_rejects_bad_state():
    X, p = np.array(correlated((8, 6))), np.ones((1, 6))
    with pytest.raises(ValueError, match=r"\(m, n, n\)"):
        monarch_whiten(X, p, p, p, np.ones((2, 2, 2)), np.ones((2, 2, 2)), EPS, MOMENTUM)
    with pytest.raises(ValueError, match="blocks"):
        MonarchWhitening(6, 2, blocks=(4, 2))


# -- circulant times diagonal -----------------------------------------------------------------

def numpy_circulant(row):
    """The matrix with entries ``row[(b - a) % C]``, index by index."""
    C = len(row)
    return onp.array([[row[(b - a) % C] for b in range(C)] for a in range(C)])


def numpy_circulant_factors(Sigma):
    """Float64 ``(scale, row)`` by averaging the correlation's wrapped diagonals."""
    C = len(Sigma)
    scale = 1 / onp.sqrt(onp.diag(Sigma) + EPS)
    R = scale[:, None] * (Sigma + EPS * onp.eye(C)) * scale[None, :]
    c = onp.array([onp.mean([R[i, (i + k) % C] for i in range(C)]) for k in range(C)])
    c = (c + c[-onp.arange(C) % C]) / 2
    cos = onp.cos(2 * onp.pi * onp.outer(onp.arange(C), onp.arange(C)) / C)
    lam = cos @ c
    return scale, cos @ onp.maximum(lam, EPS) ** -0.5 / C


def numpy_circulant_whiten(X, gamma, beta, mm, ms, mr, training=True):
    """Float64 circulant whitening: ``(Y, moving_mean, moving_scale, moving_row)``."""
    if training:
        _, mean, Sigma = moments(X)
        scale, row = numpy_circulant_factors(Sigma)
        mm = MOMENTUM * mm + (1 - MOMENTUM) * mean.reshape(mm.shape)
        ms = MOMENTUM * ms + (1 - MOMENTUM) * scale.reshape(ms.shape)
        mr = MOMENTUM * mr + (1 - MOMENTUM) * row
    else:
        mean, scale, row = mm.reshape(-1), ms.reshape(-1), mr
    return whitened(X, gamma, beta, mean, numpy_circulant(row) * scale), mm, ms, mr


def circulant_params(shape, seed=1):
    rng = onp.random.default_rng(seed + 30)
    C = shape[1]
    half = rng.normal(size=C)
    return list(base_params(shape, seed)) + [rng.uniform(0.5, 2, size=param_shape(shape)),
                                             (half + half[-onp.arange(C) % C]) / 2]


def circulant_correlation(C, seed=0):
    """A random positive-definite circulant with unit diagonal, and its eigenvalues."""
    rng = onp.random.default_rng(seed)
    lam = rng.uniform(0.3, 3, size=C)
    lam = (lam + lam[-onp.arange(C) % C]) / 2
    lam *= C / lam.sum()  # mean 1: unit diagonal
    cos = onp.cos(2 * onp.pi * onp.outer(onp.arange(C), onp.arange(C)) / C)
    return numpy_circulant(cos @ lam / C), lam


CIRCULANT_NAMES = ["Y", "moving_mean", "moving_scale", "moving_row"]


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("shape", SHAPES + [(32, 7), (4, 1, 3, 3)], ids=str)
def test_circulant_matches_reference(shape, training):
    X, args = correlated(shape), circulant_params(shape)
    got = mx_run(circulant_whiten, [X] + args, training)
    check_all(got, numpy_circulant_whiten(X, *args, training=training), CIRCULANT_NAMES)
    if not training:  # the moving statistics pass through unchanged
        for g, w in zip(got[1:], args[2:]):
            onp.testing.assert_array_equal(g, w.astype("float32"))


def test_one_channel_is_batch_norm():
    X = correlated((16, 1, 3, 3))
    gamma, beta, mm, ms, mr = circulant_params(X.shape)
    Y, mean = mx_run(circulant_whiten, [X, gamma, beta, mm, ms, onp.ones(1)], True,
                     dtype="float64")[:2]
    want = numpy_batch_norm(X, gamma, beta, mm, ms, onp.zeros_like(X))
    onp.testing.assert_allclose(Y, want[0], rtol=1e-12)
    onp.testing.assert_allclose(mean, want[4], rtol=1e-12)


@pytest.mark.parametrize("C", [2, 7, 8, 16])
def test_circulant_whitens_circulant_correlations_exactly(C):
    rng = onp.random.default_rng(C)
    corr, lam = circulant_correlation(C)
    s = rng.uniform(0.5, 3, size=C)
    Sigma = s[:, None] * corr * s[None, :]
    # eps far below float32's rounding of Sigma, so that only rounding is left
    scale, row = circulant_factors(mx, np.array(Sigma, dtype="float32"), 1e-12, C)
    W = (circulant_matrix(mx, row, C) * scale).asnumpy().astype("float64")
    # float32's rounding (2^-24) of Sigma and of each of the ~C-term sums of the
    # products, amplified by the correlation's condition number at most
    tol = 10 * C * 2.0 ** -24 * lam.max() / lam.min()
    assert onp.abs(W @ Sigma @ W.T - onp.eye(C)).max() < tol
    # Only partly for a correlation that is not circulant: the wrapped diagonals'
    # averages are right, the rest is not
    Sigma = moments(correlated((4000, C)))[2]
    scale, row = circulant_factors(mx, np.array(Sigma), EPS, C)
    W = (circulant_matrix(mx, row, C) * scale).asnumpy()
    if C > 2:  # (every symmetric 2 x 2 correlation is circulant)
        assert onp.abs(W @ Sigma @ W.T - onp.eye(C)).max() > 0.05


def test_whitening_matrix_is_circulant_times_diagonal():
    C = 7
    Sigma = moments(correlated((500, C)))[2]
    scale, row = [a.asnumpy() for a in circulant_factors(mx, np.array(Sigma), EPS, C)]
    want_scale, want_row = numpy_circulant_factors(Sigma)
    onp.testing.assert_allclose(scale, want_scale, rtol=1e-12)
    onp.testing.assert_allclose(row, want_row, rtol=1e-10, atol=1e-12)
    onp.testing.assert_allclose(row, row[-onp.arange(C) % C], atol=1e-12)  # symmetric
    M = circulant_matrix(mx, np.array(row), C).asnumpy()
    onp.testing.assert_allclose(M, numpy_circulant(row), atol=1e-12)
    # circulant: shifting rows and columns together leaves it, Z M Z^T = M
    onp.testing.assert_allclose(onp.roll(M, 1, axis=(0, 1)), M, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 4), (2, 5, 2, 2)], ids=str)
def test_circulant_gradients_by_finite_differences(shape):
    X, head = correlated(shape), onp.random.default_rng(5).normal(size=shape)
    gamma, beta, mm, ms, mr = circulant_params(shape)
    fn = lambda *a: circulant_whiten(*a, np.array(mm), np.array(ms), np.array(mr),  # noqa: E731
                                     EPS, MOMENTUM)
    check_gradients(fn, X, gamma, beta, head, rtol=1e-5, atol=1e-6)


def test_circulant_rejects_bad_input():
    X, p = np.array(correlated((8, 6))), np.ones((1, 6))
    with pytest.raises(ValueError, match="moving_row"):
        circulant_whiten(X, p, p, p, p, np.ones((5,)), EPS, MOMENTUM)
    with pytest.raises(ValueError, match="moving_scale"):
        circulant_whiten(X, p, p, p, np.ones((6,)), np.ones((6,)), EPS, MOMENTUM)
    with pytest.raises(ValueError, match="num_dims"):
        CirculantWhitening(6, num_dims=6)
    layer = CirculantWhitening(6, num_dims=4)
    layer.initialize()
    check_refused(layer, np.array(correlated((8, 6)), dtype="float32"), "expected 4-D")


# -- the Blocks -------------------------------------------------------------------------------

def test_lowrank_block_state_and_prediction():
    layer = LowRankWhitening(6, num_dims=4, rank=2, power_iters=1)
    layer.initialize()
    assert repr(layer) == ("LowRankWhitening(6, num_dims=4, rank=2, power_iters=1, eps=1e-05, "
                           "momentum=0.9)")
    assert layer.moving_factor.shape == (6, 2) and layer.moving_diag.shape == (1, 6, 1, 1)
    assert {p.grad_req for p in (layer.moving_mean, layer.moving_diag, layer.moving_factor)} \
        == {"null"}
    start = [p.data().asnumpy().astype("float64") for p in
             (layer.moving_mean, layer.moving_diag, layer.moving_factor)]
    onp.testing.assert_allclose(start[2], factor_init(6, 2), rtol=1e-6)
    X = correlated((8, 6, 3, 3))
    ones, zeros = onp.ones((1, 6, 1, 1)), onp.zeros((1, 6, 1, 1))
    with autograd.record():
        layer(np.array(X, dtype="float32"))
    _, *want = numpy_lowrank(X, ones, zeros, *start, power_iters=1)
    got = [p.data().asnumpy() for p in (layer.moving_mean, layer.moving_diag,
                                         layer.moving_factor)]
    check_all(got, want, LOWRANK_NAMES[1:], tol=dict(rtol=1e-5, atol=1e-5))
    # Prediction: the moving statistics, each example on its own
    Y = layer(np.array(X, dtype="float32")).asnumpy()
    onp.testing.assert_allclose(Y, numpy_lowrank(X, ones, zeros, *want, 1, training=False)[0],
                                **TOL32)
    onp.testing.assert_allclose(layer(np.array(X[:1], dtype="float32")).asnumpy(), Y[:1],
                                **TOL32)


def test_monarch_block_state_and_prediction():
    layer = MonarchWhitening(6, num_dims=2, iters=ITERS)
    layer.initialize()
    assert layer.blocks == (2, 3)
    assert layer.moving_right.shape == (2, 3, 3) and layer.moving_left.shape == (3, 2, 2)
    assert repr(layer) == ("MonarchWhitening(6, num_dims=2, blocks=(2, 3), iters=14, "
                           "eps=1e-05, momentum=0.9)")
    X = correlated((64, 6))
    with autograd.record():
        layer(np.array(X, dtype="float32"))
    ones, zeros = onp.ones((1, 6)), onp.zeros((1, 6))
    start = [zeros, onp.stack([onp.eye(3)] * 2), onp.stack([onp.eye(2)] * 3)]
    _, *want = numpy_monarch(X, ones, zeros, *start)
    got = [p.data().asnumpy() for p in (layer.moving_mean, layer.moving_right,
                                         layer.moving_left)]
    check_all(got, want, MONARCH_NAMES[1:], tol=dict(rtol=1e-5, atol=1e-5))
    Y = layer(np.array(X, dtype="float32")).asnumpy()
    onp.testing.assert_allclose(Y, numpy_monarch(X, ones, zeros, *want, training=False)[0],
                                **TOL32)


def test_circulant_block_state_and_prediction():
    layer = CirculantWhitening(6, num_dims=4)
    layer.initialize()
    assert repr(layer) == "CirculantWhitening(6, num_dims=4, eps=1e-05, momentum=0.9)"
    stats = (layer.moving_mean, layer.moving_scale, layer.moving_row)
    assert [p.shape for p in stats] == [(1, 6, 1, 1), (1, 6, 1, 1), (6,)]
    assert {p.grad_req for p in stats} == {"null"}
    start = [p.data().asnumpy().astype("float64") for p in stats]
    onp.testing.assert_array_equal(start[2], onp.eye(6)[0])  # circ(e_0) = I
    X = correlated((8, 6, 3, 3))
    ones, zeros = onp.ones((1, 6, 1, 1)), onp.zeros((1, 6, 1, 1))
    with autograd.record():
        layer(np.array(X, dtype="float32"))
    _, *want = numpy_circulant_whiten(X, ones, zeros, *start)
    check_all([p.data().asnumpy() for p in stats], want, CIRCULANT_NAMES[1:],
              tol=dict(rtol=1e-5, atol=1e-5))
    # Prediction: the moving statistics, each example on its own
    Y = layer(np.array(X, dtype="float32")).asnumpy()
    onp.testing.assert_allclose(Y, numpy_circulant_whiten(X, ones, zeros, *want,
                                                          training=False)[0], **TOL32)
    onp.testing.assert_allclose(layer(np.array(X[:1], dtype="float32")).asnumpy(), Y[:1],
                                **TOL32)


MAKERS = {"lowrank": lambda c, d: LowRankWhitening(c, d, rank=min(2, c)),
          "monarch": lambda c, d: MonarchWhitening(c, d),
          "circulant": lambda c, d: CirculantWhitening(c, num_dims=d)}
STATS = {"lowrank": ["moving_mean", "moving_diag", "moving_factor"],
         "monarch": ["moving_mean", "moving_right", "moving_left"],
         "circulant": ["moving_mean", "moving_scale", "moving_row"]}


@pytest.mark.parametrize("name", MAKERS)
@pytest.mark.parametrize("shape", [(10, 4), (6, 4, 5, 5)], ids=str)
def test_hybridized_equals_imperative(shape, name):
    check_hybridized_equals_imperative(MAKERS[name], MAKERS[name], shape, tol=1e-5,
                                       stats=STATS[name])


@pytest.mark.parametrize("name", MAKERS)
def test_lenet_trains_and_round_trips(tmp_path, name):
    check_lenet_round_trip(initialized_lenet(MAKERS[name]), MAKERS[name], tmp_path)


def test_cost_counts_parameters_against_dense():
    rows = {r["num_features"]: r for r in cost(MAKERS["monarch"])}
    assert sorted(rows) == [6, 16, 84, 120]
    # state beyond BN's four per channel: mean + R + L against BN's mean + var
    for C, (m, n) in [(6, (2, 3)), (16, (4, 4)), (120, (10, 12)), (84, (7, 12))]:
        assert rows[C]["extra_params"] == C * (m + n) - C
        assert rows[C]["dense_params"] == C * C
    rows = {r["num_features"]: r for r in cost(MAKERS["lowrank"])}
    assert all(r["extra_params"] == 2 * C for C, r in rows.items())  # D replaces var, U: 2C
    assert rows[6]["flops"] > 0 and rows[6]["bn_flops"] > 0


def test_circulant_cost_by_hand():
    rows = {r["num_features"]: r for r in cost(MAKERS["circulant"])}
    for C, shape in [(6, (256, 6, 24, 24)), (16, (256, 16, 8, 8)), (120, (256, 120)),
                     (84, (256, 84))]:
        # mean, scale, row and gamma, beta against BN's mean, var, gamma, beta
        assert rows[C]["extra_params"] == C
        # mean and centring (2 a value), covariance and output map (2 C each a
        # value), then four C x C products (2 C^3 each)
        N = math.prod(shape)
        assert rows[C]["flops"] == 2 * N + 4 * N * C + 8 * C ** 3
