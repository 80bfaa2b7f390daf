"""How saturated a trained net's sigmoids are: what each activation layer receives.

``sigmoid_stats`` runs one batch with batch statistics, as SGD saw it, and
reports per sigmoid layer the share of saturated inputs, the mean slope
``s (1 - s)`` as a fraction of its maximum 1/4, and the spread of its outputs.
"""

from __future__ import annotations

import numpy as onp
from mxnet import autograd
from mxnet.gluon import nn

from .landscape import preserved

# A sigmoid output within SATURATED of 0 or 1 counts as saturated: |z| > ln 99 = 4.6,
# where the slope is below 4% of its maximum
SATURATED = 0.01


def sigmoid_slope(z):
    """The sigmoid's derivative ``s (1 - s)`` at ``z``, in float64 (no rounding to 0 or 1)."""
    e = onp.exp(-onp.abs(onp.asarray(z, dtype=onp.float64)))
    return e / (1.0 + e) ** 2


def saturation(z, tol: float = SATURATED) -> dict:
    """Sigmoid inputs ``z`` (N, C, ...): share saturated, mean slope / 1/4, outputs' channel sd."""
    z = onp.asarray(z, dtype=onp.float64)
    s = 0.5 * (1.0 + onp.tanh(z / 2))  # the sigmoid, without overflow
    # Per channel over examples and positions, as BN's statistics, then averaged
    axes = (0,) + tuple(range(2, z.ndim))
    return {"saturated": float((onp.abs(z) > onp.log((1 - tol) / tol)).mean()),
            "slope": float(sigmoid_slope(z).mean() / 0.25),
            "spread": float(s.std(axis=axes).mean())}


def sigmoid_stats(net, X, tol: float = SATURATED) -> dict:
    """``saturation`` at each sigmoid of ``net`` on batch ``X``, and the commonest class's share.

    Training mode (BN normalises with the batch's statistics) without recording;
    every parameter and moving statistic of ``net`` is put back afterwards. For
    ``nn.Sequential``-like nets on one device, without Dropout. ``top_class`` is
    the share of ``X`` that the net assigns to the class it predicts most often
    (1.0: the same answer for every example).
    """
    if not any(_is_sigmoid(layer) for layer in net):
        raise ValueError(f"no sigmoid Activation among the children of {type(net).__name__}")
    ctx = next(iter(net.collect_params().values())).list_ctx()[0]
    h = X.as_in_ctx(ctx)
    stats = {"saturated": [], "slope": [], "spread": []}
    with preserved(net, h), autograd.train_mode():
        for layer in net:
            if _is_sigmoid(layer):
                for key, value in saturation(h.asnumpy(), tol).items():
                    stats[key].append(value)
            h = layer(h)
        predicted = h.asnumpy().argmax(axis=1).astype(int)
    stats["top_class"] = float(onp.bincount(predicted).max() / len(predicted))
    return stats


def _is_sigmoid(layer) -> bool:
    return isinstance(layer, nn.Activation) and layer._act_type == "sigmoid"


__all__ = ["SATURATED", "saturation", "sigmoid_slope", "sigmoid_stats"]
