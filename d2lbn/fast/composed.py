"""A from-scratch batch norm built for MXNet's fast CPU kernels.

Same contract and numbers as ``functional.batch_norm``; only the arrangement of
the arithmetic differs. The book's version is slow on CPU not because of Python
but because MXNet's CPU broadcast and reduce kernels are: ``X - mean`` walks an
index per element and its backward is a reduce, ``mean(axis=(0, 2, 3))`` is a
slow reduce, ``X ** 2`` is a slow power kernel. So this version

- applies each per-channel affine map (``X - K``, ``a * Xc + b``) as a 1x1
  convolution (oneDNN), forward and backward;
- sums per channel with matrix products along the last axis
  (``fully_connected`` with a row of ones), never with a reduce kernel;
- squares with ``np.square``, not ``** 2``;
- never reshapes a full-size 4-D array (in a compiled graph that is a copy);
- shifts by a per-channel value K (the first example's mean) before squaring:
  one pass gives both moments, and float32 keeps the variance where the
  unshifted ``E[x^2] - E[x]^2`` would cancel (mean 1000, variance 1).

Nothing here is a normalisation operator: convolution, fully_connected, dot,
square and elementwise arithmetic only. Autograd derives the backward pass.

Dtypes: float32 and float64, each computed in its own dtype (the constants are
built in the input's). float16 is refused with a ``ValueError``: MXNet 1.9.1
has no float16 matrix products on CPU (``dot``, ``fully_connected``), which
this version is built on; the book's ``functional.batch_norm`` takes float16.

Timing log, forward+backward of one BN on (256, 6, 24, 24), median ms, 2-core
CPU (MXNet 1.9.1, oneDNN), each version hybridized unless said otherwise:

  book, imperative (d2lbn.batch_norm)                 316
  book, hybridized                                    236
  sums as matrix products, broadcasting arithmetic    225  (broadcast backward = reduce)
  avg-pool sums + grouped 1x1 convolutions            210  (global avg pooling backward: 100)
  grouped 1x1 convolutions + matrix-product sums     14.6
  dense diagonal 1x1 convolutions + same sums        14.3
  + shift by the first example, one pass (this)      11.3
  fused npx.batch_norm / nn.BatchNorm hybridized     6.9 / 6.6

The primitives behind it (fwd / fwd+bwd ms on the same shape; a copy is 0.47):
X - m 5.3 / 35; dense 1x1 conv 1.1 / 3.0; grouped 1x1 conv 1.8 / 3.9;
X.mean(axis=(0, 2, 3)) 15.6 / 17.4; global avg pooling 0.8 / 100;
fully_connected row sums 0.4 / 0.8; X ** 2 14 / 29; np.square 0.55 / 1.55.
What is left is the count of full-size passes: about 5 forward and 6 backward
(with gradient sums between them) against the fused operator's 2 kernels.

What bounds it (``bench``'s "1x1 conv" column): a BN from general operations
must scale each channel of the whole array at least once, and a 1x1
convolution is the fastest general kernel that does; this version runs two
(the shift and the output map), and the shift is what keeps float32 exact.
Two of them alone, forward and backward, already take 11.1 ms on
(256, 6, 24, 24) and 4.7 ms on (256, 16, 8, 8), against the fused operator's
9.7 and 3.7 ms (one bench run). Tried and dropped, same machine:

- a CustomOp with a hand-written NumPy forward and backward (two-pass
  variance, results written straight into MXNet's buffers): 12.9 ms against
  the fused operator's 9.2 in the same run. The Python bridge alone costs
  1.4 ms for an identity op's forward and backward, more than the whole
  fused operator on (256, 120) (1.0 ms), and NumPy's passes ran about 1.5x
  slower inside the op than on their own;
- grouped rather than dense 1x1 convolutions at 16 channels: within noise;
- at 16 channels oneDNN hands the sums a blocked layout, which costs a
  reorder: a shift convolution with one extra (zero) output channel avoids
  it, 6.8 against 7.4 ms on (256, 16, 8, 8); dropped, as it is 1% of a
  LeNet step for an odd-looking graph;
- one shift per position (X - X[0] by broadcasting, sums over the batch
  axis as matrix products, one convolution only): 33 against 14.4 ms for
  this version on (256, 6, 24, 24);
- sums with a depthwise HxW convolution, or over the two trailing axes with
  a reduce kernel: slower than the matrix products (7.1 and 9.1 against 5.7
  ms with the shift convolution on (256, 16, 8, 8)).
"""

from __future__ import annotations

import mxnet as mx
import numpy as onp
from mxnet import autograd

from ..functional import UNCENTRED, check_batch_norm_args, check_normalize, moving_average
from ..layers import HybridBatchNorm

# float16 has no CPU kernels for the matrix products below
DTYPES = ("float32", "float64")


def batch_norm_fast(X, gamma, beta, moving_mean, moving_var, eps, momentum,
                    normalize="full"):
    """``batch_norm`` built from fast kernels; return ``(Y, moving_mean, moving_var)``."""
    check_batch_norm_args(X, gamma, beta, moving_mean, moving_var, dtypes=DTYPES)
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
    # runs it faster than the grouped (num_group=C) one, forward and backward
    # (3.0 vs 3.9 ms at C=6); the wasted multiply-adds cost C times the work,
    # so with many channels (64: 407 vs 337 ms) the grouped form wins.
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
    """``HybridBatchNorm`` with ``batch_norm_fast`` inside: same parameters, state and checks.

    Hybridize it on its own or inside ``nn.Sequential`` (as ``models.lenet('fast')``
    does), never inside a hybridized ``HybridSequential``: the compiled graph
    returns the new moving statistics, which the block stores. float32 and
    float64 (after ``cast('float64')``); float16 is refused, as by ``batch_norm_fast``.
    """

    dtypes = DTYPES

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5,
                 momentum: float = 0.9, normalize: str = "full", **kwargs):
        super().__init__(num_features, num_dims, eps=eps, momentum=momentum,
                         normalize=normalize, **kwargs)
        self._traced_spatial = self._traced_dtype = None

    def hybridize(self, active=True, **kwargs):
        # The compiled graph keeps its buffers and shapes between calls (a few
        # per cent of a LeNet step); another batch size still works, re-planned
        kwargs.setdefault("static_alloc", True)
        kwargs.setdefault("static_shape", kwargs["static_alloc"])
        super().hybridize(active, **kwargs)

    def forward(self, X):
        # The graph is built for the input's spatial shape and dtype (not its
        # batch size): retrace when they change, as HybridBatchNorm does when
        # the mode changes. (Bad input is refused next, before any state moves)
        if not isinstance(X, mx.sym.Symbol):
            traced = (tuple(X.shape[2:]), onp.dtype(X.dtype))
            if traced != (self._traced_spatial, self._traced_dtype):
                self._clear_cached_op()
                self._traced_spatial, self._traced_dtype = traced
        return super().forward(X)

    def hybrid_forward(self, F, X, gamma, beta, moving_mean, moving_var):
        return batch_norm_fast_graph(F, X, gamma, beta, moving_mean, moving_var, self.eps,
                                     self.momentum, num_features=self.num_features,
                                     spatial=self._traced_spatial,
                                     training=self._traced_training, normalize=self.normalize,
                                     dtype=self._traced_dtype)


__all__ = ["FastBatchNorm", "batch_norm_fast", "batch_norm_fast_graph"]
