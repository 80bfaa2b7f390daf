"""Beyond per-channel standardisation: ZCA (group) whitening and a PIT normalisation.

``zca_whiten``: ``Y = Sigma^{-1/2} (X - mean)``, the channels' covariance taken
whole or in groups of consecutive channels, its inverse square root by
Newton-Schulz iterations as in IterNorm (Huang et al., CVPR 2019). ``pit_norm``:
``sqrt(12) * (Phi(z) - 1/2)`` of BN's standardised ``z``. Both are built from
matrix products and 1x1 convolutions, as ``d2lbn.fast`` is.
"""

from __future__ import annotations

import math
import warnings

import mxnet as mx
import numpy as onp
from mxnet import autograd, init

from ..functional import WIDE_DTYPES, moving_average
from ..layers import HybridBatchNorm


def inv_sqrt_newton_schulz(Sigma, iters: int):
    """``Sigma^{-1/2}`` of each symmetric positive-definite ``(g, g)`` block in ``(G, g, g)``."""
    return inv_sqrt(mx, Sigma, iters, Sigma.shape[-1])


def inv_sqrt(F, Sigma, iters, g):
    """Newton-Schulz for the inverse square root, for ``F`` = ``mx`` or ``mx.sym``."""
    # IterNorm's P_{k+1} = (3 P_k - P_k^3 S) / 2 from P_0 = I, for S = Sigma / trace.
    # It converges when S's eigenvalues lie in (0, 3), and the trace puts them
    # in (0, 1]. An eigenvalue l starts at sqrt(l) of its target and grows by at
    # most 1.5x per step until it is near, then converges quadratically: the
    # smaller l (ill-conditioned Sigma, many channels), the more steps. A few
    # steps only partly whiten, which IterNorm uses on purpose.
    I = F.np.eye(g)
    trace = (Sigma * I).sum(axis=(-2, -1), keepdims=True)
    # Written as the coupled iteration Z_k = P_k, Y_k = S P_k (the same matrices
    # in exact arithmetic, three products a step either way): the form above
    # multiplies a rounding error e_ij (eigenbasis) by 1 - (sqrt(r) + r) / 2 per
    # step, r = l_j / l_i, so once converged it diverges whenever the eigenvalues
    # differ by more than 2.4x (condition 4, float32: error 2e-5 after 20 steps, 19
    # after 40; condition 100, float64: 3e7 after 20)
    Y, Z = Sigma / trace, F.np.zeros_like(Sigma) + I
    for k in range(iters):
        T = 1.5 * I - 0.5 * F.np.matmul(Z, Y)
        if k < iters - 1:
            Y = F.np.matmul(Y, T)
        Z = F.np.matmul(T, Z)
    return Z / F.np.sqrt(trace)


def zca_whiten(X, gamma, beta, moving_mean, moving_whitening, eps, momentum, iters: int = 5):
    """Whiten ``X``'s channels in groups; return ``(Y, moving_mean, moving_whitening)``.

    ``moving_whitening`` holds one ``(g, g)`` block per group, shape ``(C // g, g, g)``:
    its block size ``g`` is the group size. Mode from ``autograd.is_training()``.
    """
    num_features = X.shape[1]
    group_size = check_groups(num_features, moving_whitening.shape[-1])
    if moving_whitening.shape != (num_features // group_size, group_size, group_size):
        raise ValueError(f"moving_whitening must have shape (C // g, g, g) = "
                         f"{(num_features // group_size, group_size, group_size)} for "
                         f"{num_features} channels, got {moving_whitening.shape}")
    return zca_whiten_graph(mx, X, gamma, beta, moving_mean, moving_whitening, eps, momentum,
                            num_features=num_features, group_size=group_size, iters=iters,
                            num_dims=X.ndim, training=autograd.is_training())


def zca_whiten_graph(F, X, gamma, beta, moving_mean, moving_whitening, eps, momentum,
                     num_features, group_size, iters, num_dims, training):
    """``zca_whiten`` for ``F`` = ``mx`` or ``mx.sym``, with sizes and mode given."""
    C, g = num_features, group_size
    G = C // g
    I = F.np.eye(g)
    if training:
        Xc, mean, Sigma = centred_moments(F, X, C, g, num_dims)
        # eps * I keeps Sigma invertible when the batch spans fewer directions
        W = inv_sqrt(F, Sigma + eps * I, iters, g)
        # Gluon's convention: momentum is the weight of the old value
        moving_mean = moving_average(moving_mean, F.npx.reshape_like(mean, gamma), momentum)
        moving_whitening = moving_average(moving_whitening, W, momentum)
    else:
        # Prediction: the statistics gathered during training, never the batch's
        mean, W = moving_mean.reshape(-1), moving_whitening
    # gamma scales the rows of each block: Y = diag(gamma) W (X - mean) + beta
    A = W * F.npx.reshape(gamma, (G, g, 1))
    if training:
        Y = affine(F, Xc, A, beta.reshape(-1), C, g, num_dims)
    else:
        # (folding the mean into the bias saves a full pass over X)
        b = beta.reshape(-1) - F.np.matmul(A, F.npx.reshape(mean, (G, g, 1))).reshape(-1)
        Y = affine(F, working(F, X, num_dims), A, b, C, g, num_dims)
    return restore(F, Y, X, num_dims), moving_mean, moving_whitening


def pit_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    """Standardise per channel, then map through the normal CDF; as ``batch_norm``'s contract."""
    return pit_norm_graph(mx, X, gamma, beta, moving_mean, moving_var, eps, momentum,
                          num_features=X.shape[1], num_dims=X.ndim,
                          training=autograd.is_training())


def pit_norm_graph(F, X, gamma, beta, moving_mean, moving_var, eps, momentum, num_features,
                   num_dims, training):
    """``pit_norm`` for ``F`` = ``mx`` or ``mx.sym``, with sizes and mode given."""
    C = num_features
    # Phi(z) = (1 + erf(z / sqrt 2)) / 2 is Uniform(0, 1) for Gaussian z; a
    # uniform on (0, 1) has mean 1/2 and variance 1/12, so the output
    # sqrt(12) (Phi(z) - 1/2) = sqrt(3) erf(z / sqrt 2) has mean 0 and variance 1,
    # as BN's. The constants ride on the 1x1 maps around erf, not on extra passes.
    c_in, c_out = 1.0 / math.sqrt(2.0), math.sqrt(3.0)
    if training:
        Xc, mean, var = centred_moments(F, X, C, 1, num_dims)
        var = var.reshape(-1)
        a = c_in / F.np.sqrt(var + eps)
        Z = affine(F, Xc, a.reshape(C, 1, 1), F.np.zeros_like(a), C, 1, num_dims)
        moving_mean = moving_average(moving_mean, F.npx.reshape_like(mean, gamma), momentum)
        moving_var = moving_average(moving_var, F.npx.reshape_like(var, gamma), momentum)
    else:
        a = c_in / F.np.sqrt(moving_var.reshape(-1) + eps)
        Z = affine(F, working(F, X, num_dims), a.reshape(C, 1, 1),
                    -a * moving_mean.reshape(-1), C, 1, num_dims)
    # (erf is the costly part: on LeNet's first layer MXNet's CPU kernel takes,
    # forward and backward, longer than the rest of this function)
    Y = affine(F, F.npx.erf(Z), c_out * gamma.reshape(C, 1, 1), beta.reshape(-1), C, 1,
                num_dims)
    return restore(F, Y, X, num_dims), moving_mean, moving_var


def check_groups(num_features: int, group_size: int | None) -> int:
    """Return the group size (``None``: all channels); raise ``ValueError`` unless it divides C."""
    if group_size is None:
        return num_features
    if not isinstance(group_size, (int, onp.integer)) or group_size < 1:
        raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
    if num_features % group_size:
        raise ValueError(f"group_size {group_size} does not divide the {num_features} channels")
    return int(group_size)


def group_identity(num_features: int, group_size: int | None = None, dtype="float32"):
    """The identity as ``(C // g, g, g)`` blocks: the moving whitening matrix to start from."""
    g = check_groups(num_features, group_size)
    return mx.np.array(onp.broadcast_to(onp.eye(g), (num_features // g, g, g)), dtype=dtype)


# The layout the math works in: (N, C) for 2-D input, (N, C, H, W) for the
# rest (3-D input viewed as (N, C, 1, L), 5-D as (N, C, 1, D*H*W)), so that
# per-channel maps are 1x1 convolutions
def working(F, X, num_dims):
    """``X`` in a 2-D or 4-D layout (3-D and 5-D input folded into 4-D)."""
    return X if num_dims in (2, 4) else F.npx.reshape(X, (-2, -2, 1, -1))


def restore(F, Y, X, num_dims):
    """``Y`` back in the layout of ``X`` (undoes ``working``)."""
    return Y if num_dims in (2, 4) else F.npx.reshape_like(Y, X)


def centred_moments(F, X, C, g, num_dims):
    """Return the centred input (working layout), the ``(C,)`` means and ``(G, g, g)`` Sigma."""
    if num_dims == 2:
        # Sums over the batch as products with a column of ones: their backward
        # is a product too, where a broadcast's backward is a slow reduce
        # (a reshape to its own shape gives a plain layout that slicing can read)
        ones = F.np.ones_like(F.npx.reshape(X, (-2, -2))[:, 0])      # (N,)
        count = ones.sum()
        mean = F.np.dot(ones, X) / count
        Xc = X - mean
        if g == 1:
            return Xc, mean, (F.np.dot(ones, F.np.square(Xc)) / count).reshape(C, 1, 1)
        return Xc, mean, diag_blocks(F, F.np.dot(Xc.T, Xc) / count, C, g)
    X4 = working(F, X, num_dims)
    X3 = F.npx.reshape(X4, (-2, -2, -1))                             # (N, C, H*W)
    ones_l, ones_n = F.np.ones_like(X3[0, 0]), F.np.ones_like(X3[:, 0, 0])
    count = ones_n.sum() * ones_l.sum()
    mean = F.np.dot(ones_n, F.np.dot(X3, ones_l)) / count
    # Centre before the products (two passes): E[xx^T] - mean mean^T would
    # cancel in float32 when a channel's mean is large against its spread
    # (the identity built from the data, to have its dtype)
    eye = F.np.diag(F.np.ones_like(mean)).reshape(1, C, C)
    Xc = affine(F, X4, eye, -mean, C, C, 4)
    Xc3 = F.npx.reshape(Xc, (-2, -2, -1))
    if g == 1:
        sq = F.np.dot(ones_n, F.np.dot(F.np.square(Xc3), ones_l))
        return Xc, mean, (sq / count).reshape(C, 1, 1)
    # One (C, C) product per example, summed over the batch: no transpose of the
    # full array into (C, N*H*W), which costs more than the products
    per_example = F.npx.reshape(F.npx.batch_dot(Xc3, Xc3, transpose_b=True), (-2, -1))
    return Xc, mean, diag_blocks(F, (F.np.dot(ones_n, per_example) / count).reshape(C, C), C, g)


def diag_blocks(F, M, C, g):
    """The ``(G, g, g)`` diagonal blocks of a ``(C, C)`` matrix."""
    G = C // g
    if G == 1:
        return M.reshape(1, C, C)
    T = F.npx.reshape(M, (-6, G, g, -6, G, g))                       # (G, g, G, g)
    return (T * F.np.eye(G).reshape(G, 1, G, 1)).sum(axis=2)


def _block_diag(F, B, C, g):
    """The ``(C, C)`` block-diagonal matrix with the ``(G, g, g)`` blocks ``B``."""
    G = C // g
    if G == 1:
        return B.reshape(C, C)
    return (F.np.expand_dims(B, 2) * F.np.eye(G).reshape(G, 1, G, 1)).reshape(C, C)


def affine(F, X, A, b, C, g, num_dims):
    """``A @ x + b`` at each example and position; ``A``: the ``(G, g, g)`` diagonal blocks."""
    # The whole C x C matrix, zeros and all: oneDNN's dense 1x1 convolution beats
    # the grouped one at the channel counts here (see fast's affine), and for 2-D
    # input fully_connected is one product with the bias added, forward and back
    M = _block_diag(F, A, C, g)
    if num_dims == 2:
        return F.npx.fully_connected(X, M, b, num_hidden=C, no_bias=False)
    return F.npx.convolution(X, M.reshape(C, C, 1, 1), b, kernel=(1, 1), num_filter=C,
                             no_bias=False)


class Whitening(HybridBatchNorm):
    """ZCA (group) whitening of the channels, then BN's per-channel ``gamma`` and ``beta``.

    ``group_size=None`` whitens all channels together; ``1`` is batch norm with
    a moving ``1 / sqrt(var + eps)`` in place of the moving variance.
    """

    dtypes = WIDE_DTYPES
    static_graph = True
    # The whitening matrix takes the moving variance's place
    stats = ("moving_mean", "moving_whitening")
    repr_args = ("group_size", "iters")

    def __init__(self, num_features: int, num_dims: int, group_size: int | None = None,
                 iters: int = 5, eps: float = 1e-5, momentum: float = 0.9, **kwargs):
        super().__init__(num_features, num_dims, eps=eps, momentum=momentum, **kwargs)
        if not isinstance(iters, int) or iters < 1:
            raise ValueError(f"iters must be a positive int, got {iters!r}")
        self.group_size, self.iters = check_groups(num_features, group_size), iters
        g = self.group_size
        self._add_state("moving_whitening", (num_features // g, g, g),
                        init.Constant(group_identity(num_features, g).asnumpy()))

    def _check(self, X) -> None:
        super()._check(X)
        per_channel = X.size // X.shape[1]
        if autograd.is_training() and 1 < per_channel < self.group_size:
            warnings.warn(f"whitening groups of {self.group_size} channels from {per_channel} "
                          "values each: the covariance is singular, only eps keeps it "
                          "invertible, and Newton-Schulz does not converge. Use larger "
                          "batches or smaller groups.", RuntimeWarning, stacklevel=3)

    def hybrid_forward(self, F, X, gamma, beta, moving_mean, moving_whitening):
        return zca_whiten_graph(F, X, gamma, beta, moving_mean, moving_whitening, self.eps,
                                self.momentum, num_features=self.num_features,
                                group_size=self.group_size, iters=self.iters,
                                num_dims=self.num_dims, training=self._traced_training)


class PITNorm(HybridBatchNorm):
    """``pit_norm`` as a Block: BN's parameters, moving statistics, checks and hybridization."""

    dtypes = WIDE_DTYPES
    static_graph = True

    def hybrid_forward(self, F, X, gamma, beta, moving_mean, moving_var):
        return pit_norm_graph(F, X, gamma, beta, moving_mean, moving_var, self.eps,
                              self.momentum, num_features=self.num_features,
                              num_dims=self.num_dims, training=self._traced_training)


__all__ = ["PITNorm", "Whitening", "check_groups", "group_identity", "inv_sqrt_newton_schulz",
           "pit_norm", "pit_norm_graph", "zca_whiten", "zca_whiten_graph"]
