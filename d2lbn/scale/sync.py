"""Batch norm across devices: per-device statistics versus synchronized statistics.

Per-device BN normalises each device's shard with that shard's statistics;
synchronized BN shares per-channel sums, so that outputs, gradients and moving
statistics equal single-device BN on the whole batch. The sums cross devices by
copies that autograd records (``all_reduce``), or by any reduction that also
spans processes (``d2lbn.scale.dist``). Gluon's ``contrib.nn.SyncBatchNorm``
does not serve: it refuses numpy arrays and weights uneven shards wrongly.
"""

from __future__ import annotations

import functools

from mxnet import autograd, np
from mxnet.gluon import nn

from ..functional import (
    FLOAT_DTYPES,
    WIDE_DTYPES,
    batch_norm,
    channel_axes,
    check_batch_norm_args,
    moving_average,
)
from ..layers import BatchNormBase, warn_if_degenerate


def split_and_load(X, ctxs, sizes=None):
    """Split batch ``X`` on axis 0 into one shard per context, of ``sizes`` or near-equal."""
    if not ctxs:
        raise ValueError("need at least one context")
    n = X.shape[0]
    if sizes is None:
        # Like numpy.array_split: the first n % len(ctxs) shards take one more
        sizes = [n // len(ctxs) + (i < n % len(ctxs)) for i in range(len(ctxs))]
    sizes = [int(s) for s in sizes]
    if len(sizes) != len(ctxs) or min(sizes) < 1 or sum(sizes) != n:
        raise ValueError(f"cannot split a batch of {n} into shards of {sizes} "
                         f"for {len(ctxs)} contexts (every shard needs an example)")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [X[s:s + k].as_in_ctx(ctx) for s, k, ctx in zip(starts, sizes, ctxs)]


def gather(Ys, ctx=None):
    """Concatenate shards ``Ys`` on axis 0 on one context (default: the first shard's)."""
    ctx = Ys[0].ctx if ctx is None else ctx
    return np.concatenate([Y.as_in_ctx(ctx) for Y in Ys], axis=0)


def all_reduce(arrays, tag=None):
    """The sum of ``arrays`` (one per device) on each of their devices, recorded by autograd."""
    # tag names the quantity for reductions that need a name (a kvstore key); not here
    # Every device adds the same terms in the same order, so its copy of the sum
    # agrees with the others bit for bit. The gradient of a copy is copied back
    # to the source device, which is what lets backward cross devices.
    sums = []
    for ctx in (a.ctx for a in arrays):
        total = arrays[0].as_in_ctx(ctx)
        for a in arrays[1:]:
            total = total + a.as_in_ctx(ctx)
        sums.append(total)
    return sums


def check_shards(Xs, *per_shard, dtypes=FLOAT_DTYPES) -> tuple[int, ...]:
    """Return the channel axes of shards ``Xs``; ``ValueError`` unless they fit together."""
    if not Xs:
        raise ValueError("need at least one shard, got an empty list")
    first = Xs[0]
    for i, X in enumerate(Xs):
        if X.ndim != first.ndim or X.shape[1:2] != first.shape[1:2]:
            raise ValueError(f"shard {i} has shape {X.shape}, shard 0 has {first.shape}: "
                             "shards need the same number of axes and channels")
        if X.shape[0] == 0:
            raise ValueError(f"shard {i} is empty (shape {X.shape})")
    for arrays in per_shard:
        if len(arrays) != len(Xs):
            raise ValueError(f"{len(Xs)} shards but {len(arrays)} parameter arrays")
    # per_shard: the lists gammas, betas, moving_means, moving_vars. Each shard
    # with its arrays as batch_norm checks them, all before any arithmetic
    for X, *arrays in zip(Xs, *per_shard):
        check_batch_norm_args(X, *arrays, dtypes=dtypes)
    return channel_axes(first.ndim)


def per_device_batch_norm(Xs, gammas, betas, moving_means, moving_vars, eps, momentum):
    """``batch_norm`` on each shard alone; return lists ``(Ys, moving_means, moving_vars)``."""
    check_shards(Xs, gammas, betas, moving_means, moving_vars)
    outs = [batch_norm(*args, eps=eps, momentum=momentum)
            for args in zip(Xs, gammas, betas, moving_means, moving_vars)]
    return tuple(list(out) for out in zip(*outs))


def sync_batch_norm(Xs, gammas, betas, moving_means, moving_vars, eps, momentum,
                    reduce=all_reduce):
    """``batch_norm`` of shards ``Xs`` with their union's statistics; lists as returned above.

    ``reduce(arrays, tag)`` sums per-shard arrays over every shard there is, here
    (``all_reduce``, the default) or also in other processes (``d2lbn.scale.dist``).
    """
    # (float32 and float64: sums over a whole batch overflow float16)
    axes = check_shards(Xs, gammas, betas, moving_means, moving_vars, dtypes=WIDE_DTYPES)
    if not autograd.is_training():
        # Prediction uses the moving statistics, which are already shared
        return per_device_batch_norm(Xs, gammas, betas, moving_means, moving_vars, eps, momentum)
    with autograd.pause():
        # Values per channel in each shard, summed like the statistics, since
        # shards elsewhere may hold other numbers of examples; counts need no gradient
        counts = reduce([np.full((1,), X.size // X.shape[1], dtype=X.dtype, ctx=X.ctx)
                         for X in Xs], "count")
    sums = reduce([X.sum(axis=axes, keepdims=True) for X in Xs], "sum")
    means = [s / n for s, n in zip(sums, counts)]
    # A second pass on the deviations from the global mean, not E[X^2] - mean^2,
    # which cancels catastrophically when the mean is large against the spread
    squares = reduce([((X - mean) ** 2).sum(axis=axes, keepdims=True)
                      for X, mean in zip(Xs, means)], "square")
    variances = [s / n for s, n in zip(squares, counts)]
    Ys = [gamma * (X - mean) / np.sqrt(var + eps) + beta
          for X, gamma, beta, mean, var in zip(Xs, gammas, betas, means, variances)]
    moving_means = [moving_average(mm, mean, momentum) for mm, mean in zip(moving_means, means)]
    moving_vars = [moving_average(mv, var, momentum) for mv, var in zip(moving_vars, variances)]
    return Ys, moving_means, moving_vars


class SyncBatchNorm(BatchNormBase, nn.Block):
    """BN on a list of shards, one per device: synchronized statistics, or per-device ones.

    Initialise it on the shards' contexts. Each context keeps its own moving
    statistics: equal everywhere with ``sync=True``, the shard's own with
    ``sync=False`` (as Gluon's ``nn.BatchNorm`` does under data parallelism).
    ``reduce`` is ``sync_batch_norm``'s: ``d2lbn.scale.dist`` has one that spans processes.
    """

    repr_args = ("sync",)

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5,
                 momentum: float = 0.9, sync: bool = True, reduce=all_reduce, **kwargs):
        super().__init__(**kwargs)
        self._setup(num_features, num_dims, eps, momentum, "full")
        self.sync = sync
        self.reduce = reduce

    def forward(self, Xs):
        check_shards(Xs)
        ctxs = [X.ctx for X in Xs]
        if len(set(ctxs)) != len(ctxs):
            raise ValueError(f"one shard per context, got contexts {ctxs}")
        for X in Xs:
            self._check_input(X)
        training = autograd.is_training()
        shared = self.sync and (len(Xs) > 1 or self.reduce is not all_reduce)
        if training and not shared:
            # Statistics shared by two or more shards have two or more values
            # per channel: only a shard on its own can be degenerate
            for X in Xs:
                if warn_if_degenerate(X):
                    break
        if self.sync:
            # The layer's name tells its sums from other layers' (kvstore keys)
            norm = functools.partial(sync_batch_norm, reduce=lambda arrays, tag: self.reduce(
                arrays, f"{self.name}/{tag}"))
        else:
            norm = per_device_batch_norm
        # detach(): as in BatchNorm, the stored statistics stay outside the graph
        Ys, moving_means, moving_vars = norm(
            Xs, [self.gamma.data(c) for c in ctxs], [self.beta.data(c) for c in ctxs],
            [self.moving_mean.data(c).detach() for c in ctxs],
            [self.moving_var.data(c).detach() for c in ctxs], eps=self.eps,
            momentum=self.momentum)
        if training:
            for mean, var in zip(moving_means, moving_vars):
                self._store(mean, var)  # into the copy on that shard's context
        return Ys


class PerShard(nn.Block):
    """Apply ``block`` to each shard of a list, so that a net of shards can hold any layer."""

    def __init__(self, block, **kwargs):
        super().__init__(**kwargs)
        self.block = block

    def forward(self, Xs):
        return [self.block(X) for X in Xs]



class ShardedSequential(nn.Sequential):
    """An ``nn.Sequential`` that maps a list of shards, one per device, to a list of outputs."""

    takes_shards = True  # train.forward hands it every shard at once


def sharded(net, sync: bool = True, reduce=all_reduce) -> ShardedSequential:
    """``net`` on lists of shards: our BN layers become ``SyncBatchNorm``, the rest ``PerShard``.

    The new net shares the old one's other layers (and their parameters); its BN
    layers are new, with the old ones' settings. ``sync`` and ``reduce`` are
    ``SyncBatchNorm``'s.
    """
    out = ShardedSequential()
    for layer in net:
        if isinstance(layer, nn.BatchNorm):
            # It does not know whether it sees 2-D or 4-D input, which SyncBatchNorm needs
            raise ValueError(f"cannot shard Gluon's {layer!r}: build the net with our "
                             "BatchNorm (norm='scratch') instead")
        if isinstance(layer, BatchNormBase) and not isinstance(layer, SyncBatchNorm):
            if layer.normalize != "full":
                raise ValueError(f"SyncBatchNorm normalises fully, unlike {layer!r}")
            layer = SyncBatchNorm(layer.num_features, layer.num_dims, eps=layer.eps,
                                  momentum=layer.momentum, sync=sync, reduce=reduce)
        elif not isinstance(layer, SyncBatchNorm):
            layer = PerShard(layer)
        out.add(layer)
    return out
