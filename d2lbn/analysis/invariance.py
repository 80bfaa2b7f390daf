"""What BN undoes: a shift and a positive scale of each channel of its input.

Training-mode BN gives ``BN(c * Z + b) = sign(c) * BN(Z)`` per channel (exactly
for ``eps = 0``); ``scaled_norm`` puts a ``ChannelScale`` before a BN layer to test it.
"""

from __future__ import annotations

import numpy as onp
from mxnet import autograd, np
from mxnet.gluon import nn

from .. import models
from ..fast import stop_gradient
from ..functional import batch_norm


def standardize(Z, eps: float = 1e-5):
    """BN in training mode with gamma 1 and beta 0: each channel by its batch statistics."""
    shape = (1, Z.shape[1]) + (1,) * (Z.ndim - 2)
    ones, zeros = np.ones(shape, dtype=Z.dtype), np.zeros(shape, dtype=Z.dtype)
    with autograd.train_mode():
        return batch_norm(Z, ones, zeros, zeros, ones, eps, 0.9)[0]


class ChannelScale(nn.HybridBlock):
    """Multiply each channel (axis 1) by a fixed factor, which training leaves alone."""

    def __init__(self, scales, num_dims: int = 2, **kwargs):
        super().__init__(**kwargs)
        scales = onp.asarray(scales, dtype="float32").reshape(-1)
        if not 2 <= num_dims <= 5:
            raise ValueError(f"num_dims must be 2 to 5, got {num_dims}")
        self.num_dims = num_dims
        shape = (1, scales.size) + (1,) * (num_dims - 2)
        # A constant: initialisers leave it as it is and the Trainer never updates it
        self.scale = self.params.get_constant("scale", scales.reshape(shape))

    def hybrid_forward(self, F, X, scale):
        # The factors spread to X's shape first: MXNet's broadcasting product is slow on
        # CPU, and the constant needs no gradient
        return X * (F.np.zeros_like(X) + stop_gradient(scale))


def log_uniform(num_features: int, low: float, high: float, seed: int = 0) -> onp.ndarray:
    """``num_features`` factors drawn log-uniformly from ``[low, high]``, the same for a seed."""
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
    rng = onp.random.default_rng([seed, num_features])
    return onp.exp(rng.uniform(onp.log(low), onp.log(high), size=num_features))


def scaled_norm(norm: models.Norm = "gluon", low: float = 0.1, high: float = 10.0, seed: int = 0):
    """A norm factory for ``models.lenet``: fixed factors from ``log_uniform``, then ``norm``."""
    make_norm = models.norm_factory(norm)

    def make(num_features: int, num_dims: int) -> nn.Sequential:
        bn = make_norm(num_features, num_dims)
        # The book's BatchNorm is a plain Block, which a HybridSequential cannot hold
        block = nn.HybridSequential() if isinstance(bn, nn.HybridBlock) else nn.Sequential()
        block.add(ChannelScale(log_uniform(num_features, low, high, seed), num_dims), bn)
        return block

    return make
