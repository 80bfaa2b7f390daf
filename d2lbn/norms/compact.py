"""Compact covariance estimates for whitening: diagonal plus low rank, and Monarch.

- ``lowrank_whiten``: ``Sigma ~ D + U U^T`` with ``U`` of rank ``k`` from a few
  warm-started power iterations; the whitening matrix from ``k`` rank-one
  (Woodbury) updates of ``D^{-1/2}``. State: ``C (k + 2)`` numbers.
- ``monarch_whiten``: a Monarch whitening matrix ``P^T L P R`` (Dao et al.,
  ICML 2022), block-diagonal ``R`` (m blocks of n x n) and ``L`` (n of m x m)
  for ``C = m n`` channels; exact when ``Sigma`` is a Kronecker product.
  State: ``C (m + n)`` numbers against full ZCA's ``C^2``.
- ``circulant_whiten``: a circulant times a diagonal, a low-displacement-rank
  matrix: the diagonal standardises each channel, the circulant whitens the
  nearest circulant (shift-invariant) correlation matrix; exact when the
  correlation is circulant. State: ``3 C`` numbers.

``cost`` counts what each holds and computes.
"""

from __future__ import annotations

import math

import mxnet as mx
import numpy as onp
from mxnet import autograd, init

from ..functional import WIDE_DTYPES, moving_average
from ..layers import HybridBatchNorm
from .whiten import (
    Whitening,
    affine,
    centred_moments,
    diag_blocks,
    inv_sqrt,
    restore,
    working,
)

# Added under a square root where a vector's length may be exactly 0, so that
# normalising it gives 0, not NaN (far below any length that matters)
TINY = 1e-30
# Scale of the moving factor before training: small, so that prediction with
# the initial state is nearly BN's with unit variance; its directions seed the
# first power iterations, so they must not be 0
FACTOR_INIT_SCALE = 1e-3


# -- diagonal plus low rank -------------------------------------------------------------------

def lowrank_whiten(X, gamma, beta, moving_mean, moving_diag, moving_factor, eps, momentum,
                   power_iters: int = 2):
    """Whiten under ``Sigma ~ D + U U^T``; return ``(Y, moving_mean, moving_diag, moving_factor)``.

    ``moving_factor`` is U, shape ``(C, k)``; its columns also start the power
    iterations. ``moving_diag`` is D, shaped as ``moving_mean``. Mode from
    ``autograd.is_training()``.
    """
    C = X.shape[1]
    k = moving_factor.shape[-1]
    if moving_factor.shape != (C, k) or not 1 <= k <= C:
        raise ValueError(f"moving_factor must have shape (C, k) with 1 <= k <= C = {C}, "
                         f"got {moving_factor.shape}")
    if moving_diag.shape != moving_mean.shape:
        raise ValueError(f"moving_diag must have moving_mean's shape {moving_mean.shape}, "
                         f"got {moving_diag.shape}")
    return lowrank_whiten_graph(mx, X, gamma, beta, moving_mean, moving_diag, moving_factor, eps,
                                momentum, num_features=C, rank=k,
                                power_iters=power_iters, num_dims=X.ndim,
                                training=autograd.is_training())


def lowrank_whiten_graph(F, X, gamma, beta, moving_mean, moving_diag, moving_factor, eps,
                         momentum, num_features, rank, power_iters, num_dims, training):
    """``lowrank_whiten`` for ``F`` = ``mx`` or ``mx.sym``, with sizes and mode given."""
    C = num_features
    if training:
        Xc, mean, Sigma = centred_moments(F, X, C, C, num_dims)
        diag, U = lowrank_factor(F, Sigma.reshape(C, C), moving_factor, power_iters, eps, rank)
        moving_mean = moving_average(moving_mean, F.npx.reshape_like(mean, gamma), momentum)
        moving_diag = moving_average(moving_diag, F.npx.reshape_like(diag, gamma), momentum)
        moving_factor = moving_average(moving_factor, U, momentum)
    else:
        Xc, mean, diag, U = None, moving_mean.reshape(-1), moving_diag.reshape(-1), moving_factor
    # eps on D only: D + eps I + U U^T = (D + U U^T) + eps I, BN's eps when k = 0
    W = woodbury_whitening(F, diag + eps, U, rank)
    return _apply(F, X, Xc, W, mean, gamma, beta, C, num_dims), \
        moving_mean, moving_diag, moving_factor


def lowrank_factor(F, Sigma, start, power_iters, eps, rank):
    """``(d, U)`` with ``Sigma ~ diag(d) + U U^T``: ``U``'s columns by deflated power iteration."""
    S, columns = Sigma, []
    for i in range(rank):
        v = _unit(F, start[:, i:i + 1])                              # (C, 1)
        for _ in range(power_iters):
            v = _unit(F, F.np.dot(S, v))
        # Nystrom's u = S v / sqrt(v^T S v): u = sqrt(lambda) v for an eigenvector
        # v, and for any v, S - u u^T stays positive semi-definite (so does the
        # diagonal left over). eps keeps it finite when S v = 0, and only shrinks u
        Sv = F.np.dot(S, v)
        u = Sv / F.np.sqrt(F.np.dot(v.T, Sv) + eps)
        S = S - F.np.dot(u, u.T)
        columns.append(u)
    U = F.np.concatenate(columns, axis=1)
    diag = F.np.diag(Sigma)
    # Positive in exact arithmetic; rounding may leave a fully explained channel
    # a hair below 0
    return F.np.maximum(diag - F.np.square(U).sum(axis=1), 0), U


def woodbury_whitening(F, d, U, rank):
    """``W`` with ``W (diag(d) + U U^T) W^T = I``: rank-one updates of ``diag(d)^{-1/2}``."""
    # If W S W^T = I, then with w = W u and H = I + g w w^T, H W (S + u u^T) W^T H
    # = H (I + w w^T) H, which is I for g = ((1 + s)^{-1/2} - 1) / s, s = w^T w:
    # (I + w w^T)^{-1/2} by the Woodbury identity. Written as -1 / (r (1 + r)),
    # r = sqrt(1 + s), it does not cancel for small s. One C x C product a column.
    # For orthogonal columns and d constant, W is ZCA's (Sigma)^{-1/2}. The
    # updates cancel D^{-1/2}'s large entries where D is small against U U^T:
    # about log10(max s) digits are lost, so a channel that the factor explains
    # almost fully (D near eps) leaves float32's W right to only a few digits
    W = F.np.diag(1.0 / F.np.sqrt(d))
    for i in range(rank):
        w = F.np.dot(W, U[:, i:i + 1])
        r = F.np.sqrt(1.0 + F.np.square(w).sum())
        W = W - F.np.dot(w, F.np.dot(w.T, W)) / (r * (1.0 + r))
    return W


def factor_init(num_features: int, rank: int) -> onp.ndarray:
    """The moving factor to start from: fixed generic orthonormal directions, scaled small."""
    # Generic, so that no direction of the covariance is orthogonal to all of them
    Q, _ = onp.linalg.qr(onp.random.default_rng(0).normal(size=(num_features, rank)))
    return FACTOR_INIT_SCALE * Q


def _unit(F, v):
    return v / F.np.sqrt(F.np.square(v).sum() + TINY)


def _apply(F, X, Xc, W, mean, gamma, beta, C, num_dims):
    """``diag(gamma) W (X - mean) + beta`` as one dense 1x1 map; ``Xc``: X centred, if known."""
    A = (W * F.npx.reshape(gamma, (C, 1))).reshape(1, C, C)
    if Xc is not None:
        return restore(F, affine(F, Xc, A, beta.reshape(-1), C, C, num_dims), X, num_dims)
    # (folding the mean into the bias saves a full pass over X)
    b = beta.reshape(-1) - F.np.dot(A.reshape(C, C), mean)
    return restore(F, affine(F, working(F, X, num_dims), A, b, C, C, num_dims), X, num_dims)


# -- Monarch ----------------------------------------------------------------------------------

def monarch_blocks(num_features: int) -> tuple[int, int]:
    """``(m, n)`` with ``m n = C`` and ``m <= n`` as close as can be: the fewest numbers."""
    m = max(d for d in range(1, math.isqrt(num_features) + 1) if num_features % d == 0)
    return m, num_features // m


def monarch_whiten(X, gamma, beta, moving_mean, moving_right, moving_left, eps, momentum,
                   iters: int = 5):
    """Whiten ``X`` by a Monarch matrix; return ``(Y, moving_mean, moving_right, moving_left)``.

    ``moving_right`` holds R's m blocks, shape ``(m, n, n)``, ``moving_left`` L's
    n blocks, ``(n, m, m)``, for ``C = m n`` channels. Mode from ``autograd.is_training()``.
    """
    C = X.shape[1]
    m, n = moving_right.shape[0], moving_right.shape[-1]
    if m * n != C or moving_right.shape != (m, n, n) or moving_left.shape != (n, m, m):
        raise ValueError(f"moving_right must have shape (m, n, n) and moving_left (n, m, m) "
                         f"with m n = C = {C}, got {moving_right.shape} and {moving_left.shape}")
    return monarch_whiten_graph(mx, X, gamma, beta, moving_mean, moving_right, moving_left, eps,
                                momentum, num_features=C, blocks=(m, n), iters=iters,
                                num_dims=X.ndim, training=autograd.is_training())


def monarch_whiten_graph(F, X, gamma, beta, moving_mean, moving_right, moving_left, eps,
                         momentum, num_features, blocks, iters, num_dims, training):
    """``monarch_whiten`` for ``F`` = ``mx`` or ``mx.sym``, with sizes and mode given."""
    C, (m, n) = num_features, blocks
    if training:
        Xc, mean, Sigma = centred_moments(F, X, C, C, num_dims)
        Sigma = Sigma.reshape(C, C)
        # (eps I in the input's dtype: add does not mix dtypes)
        I = F.np.diag(F.np.ones_like(mean))
        R = inv_sqrt(F, diag_blocks(F, Sigma, C, n) + eps * I[:n, :n], iters, n)
        L = inv_sqrt(F, _after_right(F, Sigma, R, m, n) + eps * I[:m, :m], iters, m)
        moving_mean = moving_average(moving_mean, F.npx.reshape_like(mean, gamma), momentum)
        moving_right = moving_average(moving_right, R, momentum)
        moving_left = moving_average(moving_left, L, momentum)
    else:
        # As Whitening's moving matrix: each factor is averaged on its own
        Xc, mean, R, L = None, moving_mean.reshape(-1), moving_right, moving_left
    W = monarch_matrix(F, L, R, m, n)
    return _apply(F, X, Xc, W, mean, gamma, beta, C, num_dims), \
        moving_mean, moving_right, moving_left


def monarch_matrix(F, L, R, m: int, n: int):
    """The ``(C, C)`` matrix ``P^T diag(L) P diag(R)`` from the blocks: one product an entry."""
    # Entry (a n + b, c n + j) is L[b, a, c] R[c, b, j]: output channel a n + b
    # takes, through R's block c, input c n + j, then L's block b mixes the c
    Lt = F.np.expand_dims(F.np.swapaxes(L, 0, 1), 3)                # (m, n, m, 1)
    Rt = F.np.expand_dims(F.np.swapaxes(R, 0, 1), 0)                # (1, n, m, n)
    return (Lt * Rt).reshape(m * n, m * n)


def _after_right(F, Sigma, R, m, n):
    """L's blocks of the covariance after R, ``(n, m, m)``: ``S[b] = P R Sigma R^T P^T``'s."""
    # (R Sigma R^T)[a n + b, c n + b] = sum_jk R[a, b, j] Sigma[a n + j, c n + k] R[c, b, k]:
    # one batched product (a) and one weighted sum (k), C^2 n multiply-adds each,
    # not the C^3 of dense products with the block-diagonal R and P
    G = F.np.matmul(R, Sigma.reshape(m, n, m * n)).reshape(m, n, m, n)     # [a, b, c, k]
    S = (G * F.np.expand_dims(F.np.swapaxes(R, 0, 1), 0)).sum(axis=3)     # [a, b, c]
    return F.np.swapaxes(S, 0, 1)


def stride_permutation(m: int, n: int, dtype="float32"):
    """The ``(C, C)`` permutation matrix P taking channel ``a n + b`` to ``b m + a``."""
    # (monarch_matrix does without it: P only says which entries L and R meet at)
    # Row a n + b of the identity becomes row b m + a: the (m, n) grid transposed
    C = m * n
    return mx.np.swapaxes(mx.np.eye(C, dtype=dtype).reshape(m, n, C), 0, 1).reshape(C, C)


# -- circulant times diagonal -----------------------------------------------------------------

def circulant_whiten(X, gamma, beta, moving_mean, moving_scale, moving_row, eps, momentum):
    """Whiten by ``circ(row) diag(scale)``; return ``(Y, moving_mean, moving_scale, moving_row)``.

    ``moving_scale`` is the diagonal, shaped as ``moving_mean``; ``moving_row``
    the circulant's first row, ``(C,)``, symmetric (``row[k] = row[C - k]``).
    Mode from ``autograd.is_training()``.
    """
    C = X.shape[1]
    if moving_scale.shape != moving_mean.shape or moving_row.shape != (C,):
        raise ValueError(f"moving_scale must have moving_mean's shape {moving_mean.shape} and "
                         f"moving_row shape ({C},), got {moving_scale.shape} and "
                         f"{moving_row.shape}")
    return circulant_whiten_graph(mx, X, gamma, beta, moving_mean, moving_scale, moving_row,
                                  eps, momentum, num_features=C, num_dims=X.ndim,
                                  training=autograd.is_training())


def circulant_whiten_graph(F, X, gamma, beta, moving_mean, moving_scale, moving_row, eps,
                           momentum, num_features, num_dims, training):
    """``circulant_whiten`` for ``F`` = ``mx`` or ``mx.sym``, with sizes and mode given."""
    C = num_features
    if training:
        Xc, mean, Sigma = centred_moments(F, X, C, C, num_dims)
        scale, row = circulant_factors(F, Sigma.reshape(C, C), eps, C)
        moving_mean = moving_average(moving_mean, F.npx.reshape_like(mean, gamma), momentum)
        moving_scale = moving_average(moving_scale, F.npx.reshape_like(scale, gamma), momentum)
        moving_row = moving_average(moving_row, row, momentum)
    else:
        # As Monarch's: each factor is averaged on its own
        Xc, mean, scale, row = (None, moving_mean.reshape(-1), moving_scale.reshape(-1),
                                moving_row)
    # (C, C) times (C,) scales the columns: circ(row) diag(scale)
    W = circulant_matrix(F, row, C) * scale
    return _apply(F, X, Xc, W, mean, gamma, beta, C, num_dims), \
        moving_mean, moving_scale, moving_row


def circulant_factors(F, Sigma, eps, C):
    """``(scale, row)``: ``circ(row)`` whitens the nearest circulant to ``Sigma``'s correlation."""
    # eps on Sigma, as BN's: the correlation D (Sigma + eps I) D has a unit
    # diagonal, and one channel gives BN's 1 / sqrt(var + eps)
    diag = F.np.diag(Sigma)
    scale = 1.0 / F.np.sqrt(diag + eps)
    I = F.np.diag(F.np.ones_like(diag))
    R = (Sigma + eps * I) * F.np.expand_dims(scale, 1) * F.np.expand_dims(scale, 0)
    # The nearest circulant averages R's wrapped diagonals, c_k = mean_a R[a, a + k];
    # its eigenvalues sum_k c_k cos(2 pi j k / C) = (Cos^T R Cos + Sin^T R Sin)_jj / C
    # (cos(x - y) expanded), products only. cos is even, so they come out of
    # the symmetrised c_k, and lam_j = lam_{C - j}
    Cos, Sin = fourier_basis(F, diag, C)
    lam = ((F.np.dot(R, Cos) * Cos).sum(axis=0) + (F.np.dot(R, Sin) * Sin).sum(axis=0)) / C
    # An average of shifted copies of the positive-definite R: lam > 0 but for
    # rounding, which the floor catches
    row = F.np.dot(Cos, 1.0 / F.np.sqrt(F.np.maximum(lam, eps))) / C
    return scale, row


def circulant_matrix(F, row, C):
    """The ``(C, C)`` circulant with the symmetric first ``row``: ``M[a, b] = row[(b - a) % C]``."""
    # Its eigenvalues are Cos row; M = (Cos diag(mu) Cos + Sin diag(mu) Sin) / C,
    # the real Fourier basis, as cos(2 pi j (b - a) / C) expands
    Cos, Sin = fourier_basis(F, row, C)
    mu = F.np.dot(Cos, row)
    return (F.np.dot(Cos * mu, Cos) + F.np.dot(Sin * mu, Sin)) / C


def fourier_basis(F, like, C):
    """``cos`` and ``sin`` of ``2 pi j k / C``, ``(C, C)`` each, in ``like``'s dtype."""
    # (from the data, to have its dtype in a graph; j k reduced mod C first, exactly,
    # so that float32 takes the cosine of an angle below 2 pi, not of one near 740)
    k = F.npx.arange_like(like, axis=0)
    angle = (2 * math.pi / C) * F.np.mod(F.np.expand_dims(k, 1) * F.np.expand_dims(k, 0), C)
    return F.np.cos(angle), F.np.sin(angle)


# -- the Blocks -------------------------------------------------------------------------------

class LowRankWhitening(HybridBatchNorm):
    """``lowrank_whiten`` as a Block: ``Sigma ~ D + U U^T`` of rank ``rank``, moving D and U."""

    dtypes = WIDE_DTYPES
    static_graph = True
    stats = ("moving_mean", "moving_diag", "moving_factor")
    repr_args = ("rank", "power_iters")

    def __init__(self, num_features: int, num_dims: int, rank: int = 2, power_iters: int = 2,
                 eps: float = 1e-5, momentum: float = 0.9, **kwargs):
        super().__init__(num_features, num_dims, eps=eps, momentum=momentum, **kwargs)
        if not isinstance(rank, int) or not 1 <= rank <= num_features:
            raise ValueError(f"rank must be an int in [1, {num_features}], got {rank!r}")
        if not isinstance(power_iters, int) or power_iters < 0:
            raise ValueError(f"power_iters must be an int >= 0, got {power_iters!r}")
        self.rank, self.power_iters = rank, power_iters
        shape = self.moving_mean.shape
        self._add_state("moving_diag", shape, init.One())
        self._add_state("moving_factor", (num_features, rank),
                        init.Constant(factor_init(num_features, rank)))

    def hybrid_forward(self, F, X, gamma, beta, moving_mean, moving_diag, moving_factor):
        return lowrank_whiten_graph(F, X, gamma, beta, moving_mean, moving_diag, moving_factor,
                                    self.eps, self.momentum, num_features=self.num_features,
                                    rank=self.rank, power_iters=self.power_iters,
                                    num_dims=self.num_dims, training=self._traced_training)

    def flops(self, shape) -> int:
        """Leading-order floating-point operations of a training-mode forward pass on ``shape``."""
        C, k, p = self.num_features, self.rank, self.power_iters
        # covariance and the output map, dense C x C each; then the factor and W
        return _whitening_flops(shape) + 2 * C * C * k * (p + 5)


class MonarchWhitening(HybridBatchNorm):
    """``monarch_whiten`` as a Block: ``C = m n`` channels, moving R and L blocks."""

    dtypes = WIDE_DTYPES
    static_graph = True
    stats = ("moving_mean", "moving_right", "moving_left")
    repr_args = ("blocks", "iters")

    def __init__(self, num_features: int, num_dims: int, blocks: tuple[int, int] | None = None,
                 iters: int = 5, eps: float = 1e-5, momentum: float = 0.9, **kwargs):
        super().__init__(num_features, num_dims, eps=eps, momentum=momentum, **kwargs)
        m, n = monarch_blocks(num_features) if blocks is None else blocks
        if not (isinstance(m, int) and isinstance(n, int) and m >= 1 and n >= 1
                and m * n == num_features):
            raise ValueError(f"blocks must be two positive ints (m, n) with m * n = "
                             f"{num_features}, got {blocks!r}")
        if not isinstance(iters, int) or iters < 1:
            raise ValueError(f"iters must be a positive int, got {iters!r}")
        self.blocks, self.iters = (m, n), iters
        self._add_state("moving_right", (m, n, n),
                        init.Constant(onp.broadcast_to(onp.eye(n), (m, n, n))))
        self._add_state("moving_left", (n, m, m),
                        init.Constant(onp.broadcast_to(onp.eye(m), (n, m, m))))

    def hybrid_forward(self, F, X, gamma, beta, moving_mean, moving_right, moving_left):
        return monarch_whiten_graph(F, X, gamma, beta, moving_mean, moving_right, moving_left,
                                    self.eps, self.momentum, num_features=self.num_features,
                                    blocks=self.blocks, iters=self.iters,
                                    num_dims=self.num_dims, training=self._traced_training)

    def flops(self, shape) -> int:
        """Leading-order floating-point operations of a training-mode forward pass on ``shape``."""
        C, (m, n) = self.num_features, self.blocks
        # Newton-Schulz: 3 products a step on each block; L's covariance blocks
        # (2 C^2 n each for a product and a weighted sum); W, one product an entry
        return (_whitening_flops(shape) + 6 * self.iters * (m * n ** 3 + n * m ** 3)
                + 4 * C * C * n + C * C)


class CirculantWhitening(HybridBatchNorm):
    """``circulant_whiten`` as a Block: a circulant times a diagonal, moving scale and row."""

    dtypes = WIDE_DTYPES
    static_graph = True
    stats = ("moving_mean", "moving_scale", "moving_row")

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5,
                 momentum: float = 0.9, **kwargs):
        super().__init__(num_features, num_dims, eps=eps, momentum=momentum, **kwargs)
        self._add_state("moving_scale", self.moving_mean.shape, init.One())
        # circ(e_0) = I
        self._add_state("moving_row", (num_features,),
                        init.Constant(onp.eye(num_features)[0]))

    def hybrid_forward(self, F, X, gamma, beta, moving_mean, moving_scale, moving_row):
        return circulant_whiten_graph(F, X, gamma, beta, moving_mean, moving_scale, moving_row,
                                      self.eps, self.momentum, num_features=self.num_features,
                                      num_dims=self.num_dims, training=self._traced_training)

    def flops(self, shape) -> int:
        """Leading-order floating-point operations of a training-mode forward pass on ``shape``."""
        # two C x C products for the eigenvalues, two for the circulant
        return _whitening_flops(shape) + 8 * self.num_features ** 3


# -- what they cost ---------------------------------------------------------------------------

# The inputs of the chapter's LeNet's four BN layers at batch 256
LENET_SHAPES = ((256, 6, 24, 24), (256, 16, 8, 8), (256, 120), (256, 84))


def bn_flops(shape) -> int:
    """Leading-order FLOPs of BN's training-mode forward pass: 7 per value."""
    # mean (1 add), centre (1), square and sum (2), scale (1), gamma and beta (2)
    return 7 * math.prod(shape)


def _whitening_flops(shape) -> int:
    # mean and centring, then two dense C x C maps per position: covariance, output
    C = shape[1]
    return 2 * math.prod(shape) + 4 * math.prod(shape) * C


def layer_flops(layer, shape) -> int:
    """Leading-order FLOPs of ``layer``'s training-mode forward pass on ``shape``."""
    if hasattr(layer, "flops"):
        return layer.flops(shape)
    if isinstance(layer, Whitening):
        # whiten's covariance is the full C x C one; Newton-Schulz on each group
        G, g = layer.num_features // layer.group_size, layer.group_size
        return _whitening_flops(shape) + 6 * layer.iters * G * g ** 3
    return bn_flops(shape)


def cost(factory, shapes=LENET_SHAPES) -> list[dict]:
    """Per layer of ``shapes``: numbers held beyond BN's ``4 C``, and forward FLOPs against BN's.

    Counts every Parameter of ``factory(C, ndim)`` (learned and moving); FLOPs
    are ``layer_flops`` (leading order): BN's for layers it does not know.
    ``dense_params`` is a full C x C whitening matrix's ``C^2``, for comparison.
    """
    rows = []
    for shape in shapes:
        C = shape[1]
        layer = factory(C, len(shape))
        layer.initialize()
        # (one prediction pass on a single example: fixes shapes that wait for input)
        layer(mx.np.zeros((1,) + tuple(shape[1:])))
        size = sum(p.data().size for p in layer.collect_params().values())
        flops = layer_flops(layer, shape)
        rows.append(dict(num_features=C, shape=tuple(shape), extra_params=size - 4 * C,
                         dense_params=C * C, flops=int(flops), bn_flops=bn_flops(shape)))
    return rows


__all__ = ["CirculantWhitening", "LENET_SHAPES", "LowRankWhitening", "MonarchWhitening",
           "bn_flops", "cost", "layer_flops",
           "circulant_factors", "circulant_matrix", "circulant_whiten", "circulant_whiten_graph",
           "factor_init", "fourier_basis", "lowrank_factor", "lowrank_whiten",
           "lowrank_whiten_graph",
           "monarch_blocks", "monarch_matrix", "monarch_whiten", "monarch_whiten_graph",
           "stride_permutation", "woodbury_whitening"]
