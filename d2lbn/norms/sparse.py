"""Sparsity as a regulariser: BN followed by magnitude pruning, of activations or of weights.

``pruned_batch_norm`` keeps, in each example, the ``keep`` fraction of BN's
outputs largest in magnitude (``ceil(keep * D)`` values, ties broken by
``topk``), in training and prediction alike; the mask has no gradient.
``prune_weights``, ``apply_masks`` and ``prune_while_training`` prune a net's
weights by magnitude instead.
"""

from __future__ import annotations

import math

import mxnet as mx
import numpy as onp
from mxnet import autograd
from mxnet.gluon.parameter import DeferredInitializationError

from ..fast import FastBatchNorm, stop_gradient
from ..functional import batch_norm
from .compact import bn_flops


def check_keep(keep: float) -> float:
    """Return ``keep`` unless it is not a fraction in ``(0, 1]`` (then ``ValueError``)."""
    # (written as `not ... <=` so that NaN is refused too)
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    return float(keep)


def keep_count(size: int, keep: float) -> int:
    """How many of an example's ``size`` values to keep: ``ceil(keep * size)``, at least 1."""
    # (the rounding guards against keep * size landing a hair above an integer)
    return max(1, math.ceil(round(check_keep(keep) * size, 9)))


def prune_activations(Y, keep: float):
    """Zero all but the ``keep`` fraction of each example's values of largest magnitude."""
    return prune_graph(mx, Y, keep_count(Y.size // Y.shape[0], keep), Y.size // Y.shape[0])


def prune_graph(F, Y, count: int, size: int):
    """``prune_activations`` for ``F`` = ``mx`` or ``mx.sym``: keep ``count`` of ``size`` values."""
    if count >= size:
        return Y
    flat = F.npx.reshape(Y, (-2, -1))                                # (N, size)
    # topk's mask marks exactly `count` entries a row; it is a constant of the
    # forward pass, so the backward pass is the mask times the upstream gradient
    mask = stop_gradient(F.npx.topk(F.np.abs(flat), k=count, axis=1, ret_typ="mask"))
    return F.npx.reshape_like(flat * mask, Y)


def pruned_batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum, keep=0.5):
    """``batch_norm``, then ``prune_activations``; return ``(Y, moving_mean, moving_var)``."""
    check_keep(keep)
    Y, moving_mean, moving_var = batch_norm(X, gamma, beta, moving_mean, moving_var, eps,
                                            momentum)
    return prune_activations(Y, keep), moving_mean, moving_var


class PrunedBatchNorm(FastBatchNorm):
    """``pruned_batch_norm`` as a Block: ``FastBatchNorm``, then each example's top ``keep``."""

    repr_args = ("keep",)

    def __init__(self, num_features: int, num_dims: int, keep: float = 0.5, eps: float = 1e-5,
                 momentum: float = 0.9, **kwargs):
        super().__init__(num_features, num_dims, eps=eps, momentum=momentum, **kwargs)
        self.keep = check_keep(keep)

    def _trace_key(self, X) -> dict:
        # The graph is built for the example's size (topk's count)
        return {**super()._trace_key(X), "size": math.prod(X.shape[1:])}

    def hybrid_forward(self, F, X, gamma, beta, moving_mean, moving_var):
        Y, moving_mean, moving_var = super().hybrid_forward(F, X, gamma, beta, moving_mean,
                                                            moving_var)
        size = self._traced_size
        return prune_graph(F, Y, keep_count(size, self.keep), size), moving_mean, moving_var

    def flops(self, shape) -> int:
        """Leading-order FLOPs of a training-mode forward pass: BN's, |.|, a sort, the mask."""
        size = math.prod(shape[1:])
        return bn_flops(shape) + 2 * math.prod(shape) + shape[0] * size * math.ceil(
            math.log2(size))


def prune_weights(net, fraction: float, suffix: str = "weight") -> dict:
    """Zero the ``fraction`` smallest-magnitude entries of each weight of ``net``; return masks.

    Layer by layer: each Parameter whose name ends with ``suffix`` (convolution
    and dense weights, not biases, gammas or betas) loses ``floor(fraction *
    size)`` entries. The masks (1 kept, 0 pruned) go to ``apply_masks``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must lie in [0, 1), got {fraction!r}")
    masks = {}
    for name, param in net.collect_params().items():
        if not name.endswith(suffix) or param.grad_req == "null":
            continue
        w = param.data().asnumpy()
        # (a stable sort: equal magnitudes are pruned in index order, reproducibly)
        order = onp.argsort(onp.abs(w).ravel(), kind="stable")
        mask = onp.ones(w.size, dtype=w.dtype)
        mask[order[:int(fraction * w.size)]] = 0
        masks[name] = mx.np.array(mask.reshape(w.shape), dtype=w.dtype)
    apply_masks(net, masks)
    return masks


def prune_while_training(net, fraction: float, suffix: str = "weight"):
    """Re-prune ``net``'s weights by magnitude before each of its calls (a hook); return ``net``.

    A forward pre-hook runs ``prune_weights``: every step (and prediction) sees
    each weight with its ``floor(fraction * size)`` smallest entries zeroed. The
    zeroed entries still get gradients, so one that grows past the kept ones
    comes back at the next call: magnitude pruning at every step, with the pruned
    set free to change. While some weight waits for its shape (deferred
    initialisation) the hook does nothing: the call that creates it runs unpruned.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must lie in [0, 1), got {fraction!r}")

    def hook(block, _args):
        try:
            prune_weights(block, fraction, suffix)
        except DeferredInitializationError:
            pass

    net.register_forward_pre_hook(hook)
    return net


def apply_masks(net, masks: dict) -> None:
    """Multiply ``net``'s Parameters by ``masks`` (from ``prune_weights``), on every context."""
    params = net.collect_params()
    with autograd.pause():
        for name, mask in masks.items():
            for data in params[name].list_data():
                data *= mask.as_in_context(data.ctx)


__all__ = ["PrunedBatchNorm", "apply_masks", "check_keep", "keep_count", "prune_activations",
           "prune_graph", "prune_weights", "prune_while_training", "pruned_batch_norm"]
