"""Batch norm across devices: per-device statistics versus synchronized statistics.

Data parallelism splits each batch into shards, one per device. Plain BN then
normalises every shard with that shard's own statistics (per-device BN). When
shards are small or unlike each other, those statistics differ from the batch's,
and so do the moving statistics that each device keeps. Synchronized BN shares
per-channel sums between the devices, so that every shard is normalised with the
statistics of the whole batch. Its outputs, gradients and moving statistics then
equal those of single-device BN on the concatenated batch.

MXNet's ``gluon.contrib.nn.SyncBatchNorm`` is no help in the book's numpy mode.
It is a legacy operator, so numpy arrays get a ``TypeError``. In legacy mode it
runs from one thread under the default engine but hangs under ``NaiveEngine``,
where each device waits at a barrier for devices that are never started. It also
averages the devices' means without weighting them by shard size, so it is wrong
for uneven shards. Here the reduction is our own, built from copies between
devices (``as_in_ctx``). Autograd records these copies, so a single Python thread
drives every device and the gradient flows back through the shared statistics.
"""

from __future__ import annotations

from mxnet import autograd, np
from mxnet.gluon import nn

from .functional import batch_norm, channel_axes, moving_average
from .layers import BatchNormBase, check_input, warn_if_degenerate


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


def all_reduce(arrays):
    """The sum of ``arrays`` (one per device) on each of their devices, recorded by autograd."""
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


def check_shards(Xs, *per_shard) -> tuple[int, ...]:
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
    return channel_axes(first.ndim)


def per_device_batch_norm(Xs, gammas, betas, moving_means, moving_vars, eps, momentum):
    """``batch_norm`` on each shard alone; return lists ``(Ys, moving_means, moving_vars)``."""
    check_shards(Xs, gammas, betas, moving_means, moving_vars)
    outs = [batch_norm(*args, eps=eps, momentum=momentum)
            for args in zip(Xs, gammas, betas, moving_means, moving_vars)]
    return tuple(list(out) for out in zip(*outs))


def sync_batch_norm(Xs, gammas, betas, moving_means, moving_vars, eps, momentum):
    """``batch_norm`` of shards ``Xs`` with their union's statistics; lists as returned above."""
    axes = check_shards(Xs, gammas, betas, moving_means, moving_vars)
    if not autograd.is_training():
        # Prediction uses the moving statistics, which are already shared
        return per_device_batch_norm(Xs, gammas, betas, moving_means, moving_vars, eps, momentum)
    n = sum(X.size // X.shape[1] for X in Xs)
    means = [s / n for s in all_reduce([X.sum(axis=axes, keepdims=True) for X in Xs])]
    # A second pass on the deviations from the global mean, not E[X^2] - mean^2,
    # which cancels catastrophically when the mean is large against the spread
    squares = [((X - mean) ** 2).sum(axis=axes, keepdims=True) for X, mean in zip(Xs, means)]
    variances = [s / n for s in all_reduce(squares)]
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
    """

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5,
                 momentum: float = 0.9, sync: bool = True, **kwargs):
        super().__init__(**kwargs)
        self._setup(num_features, num_dims, eps, momentum, "full")
        self.sync = sync

    def forward(self, Xs):
        check_shards(Xs)
        ctxs = [X.ctx for X in Xs]
        if len(set(ctxs)) != len(ctxs):
            raise ValueError(f"one shard per context, got contexts {ctxs}")
        for X in Xs:
            check_input(X, self.num_features, self.num_dims)
        training = autograd.is_training()
        if training and not (self.sync and len(Xs) > 1):
            # Statistics shared by two or more shards have two or more values
            # per channel: only a shard on its own can be degenerate
            for X in Xs:
                if warn_if_degenerate(X):
                    break
        norm = sync_batch_norm if self.sync else per_device_batch_norm
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

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.num_features}, num_dims={self.num_dims}, "
                f"eps={self.eps}, momentum={self.momentum}, sync={self.sync})")


class PerShard(nn.Block):
    """Apply ``block`` to each shard of a list, so that a net of shards can hold any layer."""

    def __init__(self, block, **kwargs):
        super().__init__(**kwargs)
        self.block = block

    def forward(self, Xs):
        return [self.block(X) for X in Xs]

