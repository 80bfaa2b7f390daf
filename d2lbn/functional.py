"""The math of normalisation, as pure functions of arrays (no Blocks, no state)."""

from __future__ import annotations

import mxnet as mx
from mxnet import autograd


def channel_axes(ndim: int) -> tuple[int, ...]:
    """Axes that BN averages over: every axis but the channel axis 1."""
    if ndim < 2:
        raise ValueError(f"batch norm needs (N, C, ...) input, got {ndim}-D")
    return (0,) + tuple(range(2, ndim))


def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    """Batch-normalise ``X`` per channel; return ``(Y, moving_mean, moving_var)``."""
    return batch_norm_graph(mx, X, gamma, beta, moving_mean, moving_var, eps, momentum,
                            axes=channel_axes(X.ndim), training=autograd.is_training())


def batch_norm_graph(F, X, gamma, beta, moving_mean, moving_var, eps, momentum, axes,
                     training):
    """``batch_norm`` for ``F`` = ``mx.nd`` or ``mx.sym``, with axes and mode given."""
    if not training:
        # Prediction: the statistics gathered during training, never the batch's
        X_hat = (X - moving_mean) / F.np.sqrt(moving_var + eps)
        return gamma * X_hat + beta, moving_mean, moving_var
    # One mean and one (biased) variance per channel, over all examples and
    # positions: keepdims so that they broadcast against X
    mean = X.mean(axis=axes, keepdims=True)
    var = ((X - mean) ** 2).mean(axis=axes, keepdims=True)
    X_hat = (X - mean) / F.np.sqrt(var + eps)
    # Gluon's convention: momentum is the weight of the old value
    moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
    moving_var = momentum * moving_var + (1.0 - momentum) * var
    return gamma * X_hat + beta, moving_mean, moving_var
