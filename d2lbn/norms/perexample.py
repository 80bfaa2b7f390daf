"""Normalisations per example: layer norm, group norm and instance norm, and their Blocks.

Each example's values are standardised among themselves (no moving statistics,
the same in training and prediction): all of them (``layer_norm``), each group
of consecutive channels (``group_norm``) or each channel (``instance_norm``),
then scaled and shifted per channel. Unlike MXNet's operators, ``gamma`` is per
channel, ``(N, C)`` input works for layer and group norm, and NumPy arrays work.
"""

from __future__ import annotations

import mxnet as mx
from mxnet import init
from mxnet.gluon import nn

# The math lives in functional, with batch norm's; re-exported here beside the Blocks
from ..functional import (
    check_num_groups,
    group_norm,
    group_norm_graph,
    instance_axes,
    instance_norm,
    instance_norm_graph,
    layer_axes,
    layer_norm,
    layer_norm_graph,
)
from ..layers import check_input


class _ExampleNorm(nn.HybridBlock):
    """Shared parameters and checks of the per-example normalisation Blocks."""

    # Fewest axes the normalisation makes sense on
    min_dims = 2

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_dims, int) or not self.min_dims <= num_dims <= 5:
            allowed = ", ".join(str(d) for d in range(self.min_dims, 6))
            raise ValueError(f"{type(self).__name__} needs num_dims in {allowed}, "
                             f"got {num_dims!r}")
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.num_features, self.num_dims, self.eps = num_features, num_dims, eps
        shape = (1, num_features) + (1,) * (num_dims - 2)
        self.gamma = self.params.get("gamma", shape=shape, init=init.One())
        self.beta = self.params.get("beta", shape=shape, init=init.Zero())

    def forward(self, X):
        # Inside a hybridized parent X is a Symbol without a shape to check. No
        # state goes back to Python, so unlike HybridBatchNorm these layers may
        # be folded into a parent's graph
        if not isinstance(X, mx.sym.Symbol):
            check_input(X, self.num_features, self.num_dims)
        return super().forward(X)

    def _extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.num_features}, num_dims={self.num_dims}"
                f"{self._extra_repr()}, eps={self.eps})")


class LayerNorm(_ExampleNorm):
    """Layer norm over all of (C, ...) per example, per-channel gamma/beta; not Gluon's.

    Gluon's ``nn.LayerNorm`` normalises the last axis alone: the same on (N, C)
    input, not on (N, C, H, W).
    """

    def hybrid_forward(self, F, X, gamma, beta):
        return layer_norm_graph(F, X, gamma, beta, self.eps, self.num_dims)


class GroupNorm(_ExampleNorm):
    """Group norm with per-channel gamma/beta (Gluon's has one per group)."""

    def __init__(self, num_features: int, num_dims: int, num_groups: int, eps: float = 1e-5,
                 **kwargs):
        super().__init__(num_features, num_dims, eps, **kwargs)
        self.num_groups = check_num_groups(num_features, num_groups)

    def hybrid_forward(self, F, X, gamma, beta):
        return group_norm_graph(F, X, gamma, beta, self.num_groups, self.eps)

    def _extra_repr(self) -> str:
        return f", num_groups={self.num_groups}"


class InstanceNorm(_ExampleNorm):
    """Instance norm per example and channel, per-channel gamma/beta; needs (N, C, L, ...) input."""

    min_dims = 3

    def hybrid_forward(self, F, X, gamma, beta):
        return instance_norm_graph(F, X, gamma, beta, self.eps, self.num_dims)


__all__ = ["GroupNorm", "InstanceNorm", "LayerNorm", "check_num_groups", "group_norm",
           "group_norm_graph", "instance_axes", "instance_norm", "instance_norm_graph",
           "layer_axes", "layer_norm", "layer_norm_graph"]
