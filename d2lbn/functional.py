"""The math of normalisation, as pure functions of arrays (no Blocks, no state)."""

from __future__ import annotations

import mxnet as mx
from mxnet import autograd

# What batch_norm's ``normalize`` may do: centre and scale ("full", the book's),
# only centre ("mean") or only scale ("var"); the chapter's exercise compares them
NORMALIZE = ("full", "mean", "var")


def channel_axes(ndim: int) -> tuple[int, ...]:
    """Axes that BN averages over: every axis but the channel axis 1."""
    if ndim < 2:
        raise ValueError(f"batch norm needs (N, C, ...) input, got {ndim}-D")
    return (0,) + tuple(range(2, ndim))


def check_normalize(normalize: str) -> str:
    """Return ``normalize`` unless it is not one of ``NORMALIZE`` (then ``ValueError``)."""
    if normalize not in NORMALIZE:
        choices = ", ".join(repr(n) for n in NORMALIZE)
        raise ValueError(f"normalize must be one of {choices}, got {normalize!r}")
    return normalize


def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum, normalize="full"):
    """Batch-normalise ``X`` per channel; return ``(Y, moving_mean, moving_var)``."""
    return batch_norm_graph(mx, X, gamma, beta, moving_mean, moving_var, eps, momentum,
                            axes=channel_axes(X.ndim), training=autograd.is_training(),
                            normalize=normalize)


def batch_norm_graph(F, X, gamma, beta, moving_mean, moving_var, eps, momentum, axes,
                     training, normalize="full"):
    """``batch_norm`` for ``F`` = ``mx.nd`` or ``mx.sym``, with axes and mode given."""
    check_normalize(normalize)
    if not training:
        # Prediction: the statistics gathered during training, never the batch's
        X_hat = _standardize(F, X, moving_mean, moving_var, eps, normalize)
        return gamma * X_hat + beta, moving_mean, moving_var
    # One mean and one (biased) variance per channel, over all examples and
    # positions: keepdims so that they broadcast against X
    mean = X.mean(axis=axes, keepdims=True)
    var = ((X - mean) ** 2).mean(axis=axes, keepdims=True)
    X_hat = _standardize(F, X, mean, var, eps, normalize)
    # Gluon's convention: momentum is the weight of the old value. Both
    # statistics move in every mode, so that a layer can switch modes later
    moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
    moving_var = momentum * moving_var + (1.0 - momentum) * var
    return gamma * X_hat + beta, moving_mean, moving_var


def _standardize(F, X, mean, var, eps, normalize):
    """``X`` centred on ``mean`` and/or divided by ``sqrt(var + eps)``, as ``normalize`` says."""
    if normalize == "mean":
        return X - mean
    if normalize == "var":
        # No centring, but var is still the spread around the mean, not E[x^2]
        return X / F.np.sqrt(var + eps)
    return (X - mean) / F.np.sqrt(var + eps)
