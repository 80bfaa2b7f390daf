"""The chapter's batch norm rearranged for MXNet's fast CPU kernels; same contract and numbers.

Per-channel affine maps run as 1x1 convolutions and per-channel sums as matrix
products (MXNet's CPU broadcast and reduce kernels are slow); one shift by the
first example gives both moments without float32 cancellation. No normalisation
operator: autograd derives the backward pass. float32 and float64 only.
"""

from __future__ import annotations

import mxnet as mx
import numpy as onp
from mxnet import autograd

from ..functional import (
    UNCENTRED,
    WIDE_DTYPES,
    check_batch_norm_args,
    check_normalize,
    moving_average,
)
from ..layers import HybridBatchNorm


def batch_norm_fast(X, gamma, beta, moving_mean, moving_var, eps, momentum,
                    normalize="full"):
    """``batch_norm`` built from fast kernels; return ``(Y, moving_mean, moving_var)``."""
    # (float16 is refused: MXNet has no float16 matrix products on CPU)
    check_batch_norm_args(X, gamma, beta, moving_mean, moving_var, dtypes=WIDE_DTYPES)
    return batch_norm_fast_graph(mx, X, gamma, beta, moving_mean, moving_var, eps, momentum,
                                 num_features=X.shape[1], spatial=tuple(X.shape[2:]),
                                 training=autograd.is_training(), normalize=normalize,
                                 dtype=onp.dtype(X.dtype))


def batch_norm_fast_graph(F, X, gamma, beta, moving_mean, moving_var, eps, momentum,
                          num_features, spatial, training, normalize="full", dtype="float32"):
    """``batch_norm_fast`` for ``F`` = ``mx``, ``mx.nd`` or ``mx.sym``.

    ``spatial`` is the input's shape after the channel axis (``()`` for 2-D
    input) and ``dtype`` its dtype: the graph is built for them, the batch size
    stays free.
    """
    check_normalize(normalize)
    C = num_features
    if not spatial:
        return _batch_norm_2d(F, X, gamma, beta, moving_mean, moving_var, eps, momentum,
                              training, normalize)
    # Everything runs on 4-D (N, C, H, W): 3-D input is viewed as (N, C, 1, L),
    # 5-D input as (N, C, D*H, W)
    if len(spatial) == 1:
        X4, hw = F.np.expand_dims(X, 2), (1, spatial[0])
    elif len(spatial) == 3:
        X4, hw = F.npx.reshape(X, (-2, -2, -5, -2)), (spatial[0] * spatial[1], spatial[2])
    else:
        X4, hw = X, spatial
    g, b = gamma.reshape(-1), beta.reshape(-1)
    if not training:
        a = _scale(F, g, moving_mean.reshape(-1), moving_var.reshape(-1), eps, normalize)
        # a * X + b for "var" and "rms" (no centring), else a * (X - moving_mean) + b
        shift = b if normalize in UNCENTRED else b - a * moving_mean.reshape(-1)
        Y = affine(F, X4, a, shift, C)
        return _like(F, Y, X, spatial), moving_mean, moving_var
    H, W = hw
    # The shift K: each channel's mean over the first example (no gradient).
    # Centring on it before squaring keeps the float32 variance exact where
    # E[x^2] - E[x]^2 would cancel; and since the batch's variance includes the
    # spread of example means, (K - mean)^2 <= N * var: a few bits at most.
    # (Slicing along the batch axis is safe on oneDNN's blocked layouts; the
    # constants are in X's dtype, as the operators here do not mix dtypes.)
    first = stop_gradient(X4[0])                                    # (C, H, W), small
    K = F.np.dot(F.np.dot(first, F.np.ones((W,), dtype=dtype)),
                 F.np.ones((H,), dtype=dtype)) / (H * W)
    # Xc = X - K in one pass; the sums of Xc and Xc^2 give mean and variance
    # and carry their gradient back to X (autograd derives the backward pass)
    Xc = affine(F, X4, None, -K, C)
    S1, S2, count = _channel_sums(F, Xc, F.np.square(Xc), hw, C, dtype)
    S1, S2 = S1 / count, S2 / count
    mean, var = K + S1, S2 - F.np.square(S1)
    a = _scale(F, g, mean, var, eps, normalize)
    # Y = a * (X - mean) + b = a * (Xc - S1) + b; "var" and "rms" do not centre:
    # a * X + b = a * (Xc + K) + b. Both from Xc, not X4: X's gradient then
    # comes back through one convolution instead of two summed
    shift = b + a * K if normalize in UNCENTRED else b - a * S1
    Y = affine(F, Xc, a, shift, C)
    moving_mean = moving_average(moving_mean, F.npx.reshape_like(mean, gamma), momentum)
    moving_var = moving_average(moving_var, F.npx.reshape_like(var, gamma), momentum)
    return _like(F, Y, X, spatial), moving_mean, moving_var


def _scale(F, gamma, mean, var, eps, normalize):
    """The per-channel factor on X: ``gamma`` over the root of ``var`` ("rms": of
    ``var + mean^2``) plus ``eps``; ``gamma`` alone when only centring."""
    if normalize == "mean":
        return gamma
    if normalize == "rms":
        # the mean square E[x^2] = var + mean^2: both terms positive, no cancellation
        var = var + F.np.square(mean)
    return gamma / F.np.sqrt(var + eps)


def stop_gradient(x):
    """``x`` cut out of the recorded graph, for ``mx.nd`` and ``mx.sym`` NumPy arrays."""
    # (the NumPy interface has no stop_gradient of its own; keep x small: it is a copy)
    mod = mx.sym if isinstance(x, mx.sym.Symbol) else mx.nd
    return mod.stop_gradient(x.as_nd_ndarray()).as_np_ndarray()


def _like(F, Y4, X, spatial):
    """Give the 4-D result the input's shape back."""
    return Y4 if len(spatial) == 2 else F.npx.reshape_like(Y4, X)


def affine(F, X4, a, b, C):
    """``a[c] * X4 + b[c]`` per channel (``a=None``: 1) as a 1x1 convolution (oneDNN)."""
    # A dense C x C convolution with a diagonal weight: for few channels oneDNN
    # runs it faster than the grouped (num_group=C) one, forward and backward;
    # its wasted multiply-adds cost C times the work, so with many channels
    # the grouped form wins (the README's benchmark has the crossover)
    if a is None:
        a = F.np.ones_like(b)  # (from b, to have X's dtype)
    if C <= _DENSE_MAX_CHANNELS:
        return F.npx.convolution(X4, F.np.diag(a).reshape(C, C, 1, 1), b, kernel=(1, 1),
                                 num_filter=C, no_bias=False)
    W = a.reshape(C, 1, 1, 1)
    return F.npx.convolution(X4, W, b, kernel=(1, 1), num_filter=C, num_group=C, no_bias=False)


_DENSE_MAX_CHANNELS = 32


def _channel_sums(F, A, B, hw, C, dtype):
    """Per-channel sums of two (N, C, H, W) arrays of ``dtype`` and the count N*H*W."""
    H, W = hw
    # fully_connected (flatten=False) multiplies the last axis by a row of ones:
    # BLAS reads the array once, where a reduce kernel is slow. The ones are
    # constants of the traced shape: slicing A for them would fail on oneDNN's
    # blocked layouts (a convolution's output with 16 channels).
    ones_w = F.np.ones((1, W), dtype=dtype)
    rows = F.np.concatenate([
        F.npx.fully_connected(A, ones_w, no_bias=True, num_hidden=1, flatten=False),
        F.npx.fully_connected(B, ones_w, no_bias=True, num_hidden=1, flatten=False)],
        axis=1)                                                     # (N, 2C, H, 1), small
    per_example = F.np.dot(F.npx.reshape(rows, (-2, -2, -2)),
                           F.np.ones((H,), dtype=dtype))                # (N, 2C)
    ones_n = F.np.ones_like(per_example[:, 0])                      # (N,): batch size free
    sums = F.np.dot(ones_n, per_example)                            # (2C,)
    return sums[:C], sums[C:], ones_n.sum() * (H * W)


def _batch_norm_2d(F, X, gamma, beta, moving_mean, moving_var, eps, momentum, training,
                   normalize):
    """(N, C) input: sums over the batch as ``ones @ X``, spreading back as ``ones @ v``."""
    # Broadcasting arithmetic would be fine forward, but its backward sums over
    # the batch with the slow reduce kernel; matrix products go both ways fast.
    # (A reshape to its own shape gives a plain layout that slicing can read.)
    ones = F.np.ones_like(F.npx.reshape(X, (-2, -2))[:, 0:1])    # (N, 1)
    if not training:
        a = _scale(F, gamma, moving_mean, moving_var, eps, normalize)
        shift = beta if normalize in UNCENTRED else beta - a * moving_mean
        return X * F.np.dot(ones, a) + F.np.dot(ones, shift), moving_mean, moving_var
    n = ones.sum()
    # Sums of values near the first example's stay exact in float32 where sums of
    # large values (X = 1000 + noise) lose the digits the variance needs
    shift = stop_gradient(F.npx.reshape(X, (-2, -2))[0:1])       # (1, C)
    Xs = X - F.np.dot(ones, shift)
    mean_s = F.np.dot(ones.T, Xs) / n                            # (1, C)
    mean = shift + mean_s
    Xc = Xs - F.np.dot(ones, mean_s)
    var = F.np.dot(ones.T, F.np.square(Xc)) / n
    a = _scale(F, gamma, mean, var, eps, normalize)
    # "var" and "rms" scale X itself: var is still the spread around the mean
    Y = (X if normalize in UNCENTRED else Xc) * F.np.dot(ones, a) + F.np.dot(ones, beta)
    moving_mean = moving_average(moving_mean, mean, momentum)
    moving_var = moving_average(moving_var, var, momentum)
    return Y, moving_mean, moving_var


class FastBatchNorm(HybridBatchNorm):
    """``HybridBatchNorm`` with ``batch_norm_fast`` inside: same parameters, state and checks."""

    dtypes = WIDE_DTYPES
    static_graph = True

    def _trace_key(self, X) -> dict:
        # The graph is built for the input's spatial shape and dtype, not its batch size
        return {**super()._trace_key(X), "spatial": tuple(X.shape[2:]),
                "dtype": onp.dtype(X.dtype)}

    def hybrid_forward(self, F, X, gamma, beta, moving_mean, moving_var):
        return batch_norm_fast_graph(F, X, gamma, beta, moving_mean, moving_var, self.eps,
                                     self.momentum, num_features=self.num_features,
                                     spatial=self._traced_spatial,
                                     training=self._traced_training, normalize=self.normalize,
                                     dtype=self._traced_dtype)


__all__ = ["FastBatchNorm", "batch_norm_fast", "batch_norm_fast_graph"]
