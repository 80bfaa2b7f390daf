"""Fold a trained BN layer into the convolution or dense layer before it, for prediction."""

from __future__ import annotations

from mxnet import np
from mxnet.gluon import nn

from .bnstats import is_batch_norm, running_stats


def bn_affine(bn):
    """BN in prediction mode as ``scale * x + shift`` per channel: ``(scale, shift)``."""
    normalize = getattr(bn, "normalize", "full")  # the lite forms follow other formulas
    if normalize != "full":
        raise ValueError(f"expected full batch norm, not normalize={normalize!r}")
    mean, var, eps = running_stats(bn)
    mean, var = mean.data(), var.data()
    scale = bn.gamma.data().reshape(-1) / np.sqrt(var.reshape(-1) + eps)
    return scale, bn.beta.data().reshape(-1) - scale * mean.reshape(-1)


def fold_layer(layer, bn):
    """One layer computing ``bn(layer(x))`` in prediction mode (Conv2D or Dense, no activation)."""
    scale, shift = bn_affine(bn)
    if isinstance(layer, nn.Conv2D):
        kw = layer._kwargs
        if layer.act is not None or kw["num_group"] != 1:
            raise ValueError("can only fold into a plain Conv2D without activation or groups")
        folded = nn.Conv2D(layer._channels, kw["kernel"], strides=kw["stride"],
                           padding=kw["pad"], dilation=kw["dilate"],
                           in_channels=layer.weight.shape[1])
    elif isinstance(layer, nn.Dense):
        if layer.act is not None:
            raise ValueError("can only fold into a Dense layer without activation")
        folded = nn.Dense(layer._units, flatten=layer._flatten, in_units=layer.weight.shape[1])
    else:
        raise TypeError(f"cannot fold batch norm into {type(layer).__name__}")
    W = layer.weight.data()
    b = layer.bias.data() if layer.bias is not None else np.zeros(W.shape[0])
    folded.initialize(ctx=W.ctx)
    # Each output channel's weights and bias are scaled; the shift lands in the bias
    folded.weight.set_data(W * scale.reshape((-1,) + (1,) * (W.ndim - 1)))
    folded.bias.set_data(b * scale + shift)
    return folded


def fold_batch_norm(net) -> nn.HybridSequential:
    """A prediction-only copy of ``net`` with every Conv2D/Dense + BN pair folded into one."""
    layers, out, i = list(net), nn.HybridSequential(), 0
    while i < len(layers):
        if (isinstance(layers[i], (nn.Conv2D, nn.Dense)) and i + 1 < len(layers)
                and is_batch_norm(layers[i + 1])):
            out.add(fold_layer(layers[i], layers[i + 1]))
            i += 2
        else:
            out.add(layers[i])  # shared, not copied: it has no state to fold
            i += 1
    return out
