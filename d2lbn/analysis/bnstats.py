"""The statistics BN layers keep for prediction: reading them, and re-estimating them on data."""

from __future__ import annotations

import numpy as onp
from mxnet import autograd, np
from mxnet.gluon import nn

from .. import train
from ..layers import BatchNormBase


def is_batch_norm(layer) -> bool:
    """Whether ``layer`` is Gluon's ``nn.BatchNorm`` or one of d2lbn's BN Blocks."""
    return isinstance(layer, (nn.BatchNorm, BatchNormBase))


def running_stats(bn):
    """``(mean, var, eps)`` a BN layer uses in prediction mode (mean, var: its Parameters).

    d2lbn's lite forms (``normalize="mean"``, ``"var"``, ``"rms"``) predict with the same
    two statistics, so they have them too.
    """
    if isinstance(bn, BatchNormBase):
        return bn.moving_mean, bn.moving_var, bn.eps
    if isinstance(bn, nn.BatchNorm):
        return bn.running_mean, bn.running_var, bn._kwargs["eps"]
    raise TypeError(f"not a batch norm layer: {type(bn).__name__}")


def precise_bn_stats(net, data_iter, num_batches: int | None = None, device=None) -> int:
    """Set every BN layer's prediction statistics to their exact values over ``data_iter``.

    Replaces the moving averages (which lag behind the weights and follow the
    training data) with the mean and biased variance of each BN layer's input
    over the first ``num_batches`` batches, in float64. Weights are untouched.
    Works on ``nn.Sequential``-like nets; layer by layer, so that each layer's
    statistics are taken with the layers before it already re-estimated.
    Returns the number of BN layers set.
    """
    layers = list(net)
    positions = [i for i, layer in enumerate(layers) if is_batch_norm(layer)]
    if not positions:
        raise ValueError(f"no batch norm layer among the children of {type(net).__name__}")
    for i in positions:
        sums, count = 0.0, 0
        for b, (X, _) in enumerate(data_iter):
            if num_batches is not None and b >= num_batches:
                break
            h = X if device is None else X.as_in_ctx(device)
            with autograd.predict_mode():
                for layer in layers[:i]:
                    h = layer(h)
            h = h.asnumpy().astype(onp.float64)
            axes = (0,) + tuple(range(2, h.ndim))
            sums = sums + onp.stack([h.sum(axis=axes), onp.square(h).sum(axis=axes)])
            count += h.size // h.shape[1]
        if count == 0:
            raise ValueError("data_iter gave no batches")
        mean = sums[0] / count
        var = onp.maximum(sums[1] / count - onp.square(mean), 0.0)
        mean_param, var_param, _ = running_stats(layers[i])
        for param, value in ((mean_param, mean), (var_param, var)):
            param.set_data(np.array(value.reshape(param.shape), dtype=param.dtype))
    return len(positions)


def precise_accuracy(net, train_iter, test_iter, num_batches: int | None = 50) -> float:
    """Test accuracy with precise statistics over ``num_batches`` of ``train_iter``, which the
    net keeps; a net without BN has none to re-estimate and is scored as it is."""
    if any(is_batch_norm(layer) for layer in net):
        precise_bn_stats(net, train_iter, num_batches)
    return train.evaluate_accuracy(net, test_iter)


def moving_stats_error(net, data_iter, num_batches: int | None = None, device=None) -> dict:
    """How far each BN layer's moving statistics are from the exact ones over ``data_iter``.

    Per BN layer, the mean over channels of ``|moving mean - mean| / sd`` and of
    ``|moving var / var - 1|``, both against ``precise_bn_stats``, and of
    ``moving var / var`` (``var_ratio``: above 1 when training saw a larger
    variance than prediction does); the net is left as it was.
    """
    bns = [layer for layer in net if is_batch_norm(layer)]
    saved = [[p.data().copy() for p in running_stats(bn)[:2]] for bn in bns]
    precise_bn_stats(net, data_iter, num_batches, device)
    errors = {"mean": [], "var": [], "var_ratio": []}
    for bn, (moving_mean, moving_var) in zip(bns, saved):
        mean_param, var_param, _ = running_stats(bn)
        mean, var = mean_param.data().asnumpy(), var_param.data().asnumpy()
        errors["mean"].append(float((abs(moving_mean.asnumpy() - mean) / onp.sqrt(var)).mean()))
        errors["var"].append(float(abs(moving_var.asnumpy() / var - 1).mean()))
        errors["var_ratio"].append(float((moving_var.asnumpy() / var).mean()))
        mean_param.set_data(moving_mean)
        var_param.set_data(moving_var)
    return errors
