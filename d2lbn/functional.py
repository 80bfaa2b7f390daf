"""The math of normalisation, as pure functions of arrays (no Blocks, no state)."""

from __future__ import annotations

import mxnet as mx
import numpy as onp
from mxnet import autograd

# The dtypes batch_norm computes in
FLOAT_DTYPES = ("float16", "float32", "float64")
# float16 dropped: MXNet has no float16 matrix products on CPU (the fast path,
# whitening), and sums over a whole batch pass its largest value, 65504 (sync)
WIDE_DTYPES = ("float32", "float64")
# The per-channel arrays that batch_norm takes after X, in its order
PER_CHANNEL = ("gamma", "beta", "moving_mean", "moving_var")

# What batch_norm's ``normalize`` may do: centre and scale ("full", the book's),
# only centre ("mean"), or only scale, by the standard deviation ("var") or by the
# root mean square ("rms", E[x^2] per channel as in RMSNorm, but over the batch);
# the chapter's exercise compares them
NORMALIZE = ("full", "mean", "var", "rms")
# The modes that leave the mean in place (they only divide)
UNCENTRED = ("var", "rms")


def channel_axes(ndim: int) -> tuple[int, ...]:
    """Axes that BN averages over: every axis but the channel axis 1."""
    if ndim < 2:
        raise ValueError(f"batch norm needs (N, C, ...) input, got {ndim}-D")
    return (0,) + tuple(range(2, ndim))


def check_batch(X, dtypes=FLOAT_DTYPES) -> None:
    """Raise ``ValueError`` unless ``X`` is a non-empty (N, C, ...) array of one of ``dtypes``."""
    shape, dtype = X.shape, onp.dtype(X.dtype)
    channel_axes(len(shape))
    # (a NumPy dtype equals its name; building dtype.name is slow: errors only)
    if dtype not in dtypes:
        if not onp.issubdtype(dtype, onp.floating):
            raise ValueError(f"batch norm needs floating-point input, got {dtype.name}")
        raise ValueError(f"this batch norm computes in {' or '.join(dtypes)}, not {dtype.name}: "
                         f"cast the input (and a layer's parameters) to {dtypes[0]}")
    if 0 in shape:
        # In training an empty batch would move the moving statistics towards
        # 0 (MXNet's mean of nothing); there is nothing to normalise anyway
        raise ValueError(f"batch norm needs at least one value per channel, got an empty "
                         f"input of shape {shape}")


def check_batch_norm_args(X, *per_channel, dtypes=FLOAT_DTYPES) -> None:
    """Raise ``ValueError`` unless ``batch_norm`` can take ``X`` and ``gamma, beta, ...``."""
    # Here, before any arithmetic: MXNet reports a bad shape or dtype only when
    # a result is read, and a misfit can broadcast into a wrong result instead
    check_batch(X, dtypes)
    shape, dtype = X.shape, onp.dtype(X.dtype)
    want = (1, shape[1]) + (1,) * (len(shape) - 2)
    for name, a in zip(PER_CHANNEL, per_channel):
        if a.shape != want:
            raise ValueError(f"{name} must have shape {want} (one value per channel of "
                             f"input shape {shape}), got {a.shape}")
        if a.dtype != dtype:
            raise ValueError(f"{name} is {onp.dtype(a.dtype).name} but the input is "
                             f"{dtype.name}: give them one dtype")


def check_normalize(normalize: str) -> str:
    """Return ``normalize`` unless it is not one of ``NORMALIZE`` (then ``ValueError``)."""
    if normalize not in NORMALIZE:
        choices = ", ".join(repr(n) for n in NORMALIZE)
        raise ValueError(f"normalize must be one of {choices}, got {normalize!r}")
    return normalize


def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum, normalize="full"):
    """Batch-normalise ``X`` per channel; return ``(Y, moving_mean, moving_var)``."""
    check_batch_norm_args(X, gamma, beta, moving_mean, moving_var)
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
    mean, var = moments(X, axes)
    X_hat = _standardize(F, X, mean, var, eps, normalize)
    # Both statistics move in every mode, so that a layer can switch modes later
    # ("rms" needs no third one: its mean square is var + mean^2, below)
    moving_mean = moving_average(moving_mean, mean, momentum)
    moving_var = moving_average(moving_var, var, momentum)
    return gamma * X_hat + beta, moving_mean, moving_var


def moments(X, axes):
    """Mean and biased variance of ``X`` over ``axes``, kept as axes of length 1."""
    # keepdims: one mean and variance per remaining index, shaped to broadcast
    # against X; two passes, so that a large mean does not cancel the variance
    mean = X.mean(axis=axes, keepdims=True)
    var = ((X - mean) ** 2).mean(axis=axes, keepdims=True)
    return mean, var


def moving_average(old, new, momentum):
    """The running-statistics update, in Gluon's convention: ``momentum`` weighs the old value."""
    return momentum * old + (1.0 - momentum) * new


def _standardize(F, X, mean, var, eps, normalize):
    """``X`` centred on ``mean`` and/or divided by ``sqrt(var + eps)``, as ``normalize`` says."""
    if normalize == "mean":
        return X - mean
    if normalize == "var":
        # No centring, but var is still the spread around the mean, not E[x^2]
        return X / F.np.sqrt(var + eps)
    if normalize == "rms":
        # No centring, and the divisor is the root of E[x^2] = var + mean^2 (no
        # cancellation: both terms are positive). In prediction the moving
        # statistics give it: the average of the batches' E[x^2] would exceed
        # moving_var + moving_mean^2 by the variance of the batch means, small
        # for large batches (and zero once they agree, as the tests check)
        return X / F.np.sqrt(var + mean ** 2 + eps)
    return (X - mean) / F.np.sqrt(var + eps)


# Normalisation within each example (no batch statistics): layer, group and instance
# norm. Their Blocks are in norms.perexample, whose docstring says how MXNet's differ.


def layer_axes(ndim: int) -> tuple[int, ...]:
    """Axes that layer norm averages over: every axis but the batch axis 0."""
    if ndim < 2:
        raise ValueError(f"layer norm needs (N, C, ...) input, got {ndim}-D")
    return tuple(range(1, ndim))


def instance_axes(ndim: int) -> tuple[int, ...]:
    """Axes that instance norm averages over: the positions, axes 2 and on."""
    if ndim < 3:
        # On (N, C) each example has one value per channel: its mean is that
        # value, the output is beta alone. MXNet's InstanceNorm returns that quietly
        raise ValueError(f"instance norm needs (N, C, L, ...) input with positions to average "
                         f"over, got {ndim}-D (on (N, C) the output would be beta alone)")
    return tuple(range(2, ndim))


def check_num_groups(num_features: int, num_groups: int) -> int:
    """Return ``num_groups`` unless it is not a positive divisor of ``num_features``."""
    if not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if num_features % num_groups:
        raise ValueError(f"num_groups={num_groups} does not divide the {num_features} channels")
    return num_groups


def layer_norm(X, gamma, beta, eps):
    """Normalise each example over all its values; the same in training and prediction."""
    return layer_norm_graph(mx, X, gamma, beta, eps, num_dims=X.ndim)


def layer_norm_graph(F, X, gamma, beta, eps, num_dims):
    """``layer_norm`` for ``F`` = ``mx`` or ``mx.sym``, with the number of axes given."""
    return gamma * _standardize_over(F, X, layer_axes(num_dims), eps) + beta


def instance_norm(X, gamma, beta, eps):
    """Normalise each channel of each example; the same in training and prediction."""
    return instance_norm_graph(mx, X, gamma, beta, eps, num_dims=X.ndim)


def instance_norm_graph(F, X, gamma, beta, eps, num_dims):
    """``instance_norm`` for ``F`` = ``mx`` or ``mx.sym``, with the number of axes given."""
    return gamma * _standardize_over(F, X, instance_axes(num_dims), eps) + beta


def group_norm(X, gamma, beta, num_groups, eps):
    """Normalise each example's channel groups; the same in training and prediction."""
    layer_axes(X.ndim)
    check_num_groups(X.shape[1], num_groups)
    return group_norm_graph(mx, X, gamma, beta, num_groups, eps)


def group_norm_graph(F, X, gamma, beta, num_groups, eps):
    """``group_norm`` for ``F`` = ``mx`` or ``mx.sym``; ``num_groups`` must divide C."""
    # (N, C, ...) -> (N, G, C // G * ...): consecutive channels and their
    # positions form one row per example and group. npx.reshape's codes (-2 keeps
    # N, -1 takes the rest) leave the shapes out of a hybridized graph, so that
    # it serves every batch size
    X_grouped = F.npx.reshape(X, (-2, num_groups, -1))
    X_hat = F.npx.reshape_like(_standardize_over(F, X_grouped, (2,), eps), X)
    # The affine map stays per channel, not per group: channels of one group
    # share statistics but need not share a scale
    return gamma * X_hat + beta


def _standardize_over(F, X, axes, eps):
    """``X`` centred and scaled by its mean and (biased) variance over ``axes``."""
    return _standardize(F, X, *moments(X, axes), eps, "full")
