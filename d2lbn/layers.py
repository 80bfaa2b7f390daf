"""Gluon Blocks around the functions in ``functional``: parameters, state, checks."""

from __future__ import annotations

import warnings

import mxnet as mx
import numpy as onp
from mxnet import autograd, init
from mxnet.gluon import nn

from .functional import (
    FLOAT_DTYPES,
    batch_norm,
    batch_norm_graph,
    channel_axes,
    check_batch,
    check_normalize,
)


def check_input(X, num_features: int, num_dims: int, dtype=None,
                dtypes=FLOAT_DTYPES) -> None:
    """Raise ``ValueError`` unless ``X`` fits a layer: axes, channels, values, ``dtype``."""
    shape = X.shape
    if len(shape) != num_dims:
        raise ValueError(f"expected {num_dims}-D input (N, C, ...), got shape {shape}")
    if shape[1] != num_features:
        raise ValueError(f"expected {num_features} channels on axis 1, got {shape[1]} "
                         f"(input shape {shape})")
    check_batch(X, dtypes)
    # MXNet would mix the dtypes: some operators refuse later, when a result is
    # read, and the moving statistics would silently round to the parameters'
    if dtype is not None and X.dtype != dtype:
        want, got = onp.dtype(dtype).name, onp.dtype(X.dtype).name
        raise ValueError(f"the layer's parameters are {want} but the input is {got}: cast the "
                         f"input with X.astype('{want}'), or the layer with .cast('{got}')")


def warn_if_degenerate(X) -> bool:
    """Warn once per call site when a training batch leaves one value per channel."""
    # (an empty batch never gets here: check_input refuses it)
    per_channel = X.size // X.shape[1]
    if per_channel > 1:
        return False
    warnings.warn(f"batch norm on input of shape {X.shape} in training mode: one value per "
                  "channel, so the batch mean equals that value, the variance is 0 and the "
                  "normalised output is 0 (only beta passes through). Use larger batches.",
                  RuntimeWarning, stacklevel=3)
    return True


class BatchNormBase:
    """What every BN Block shares: parameters, moving state, checks, ``_store`` and repr."""

    # The input dtypes the layer computes in; the parameters' dtype must match
    dtypes = FLOAT_DTYPES
    # The moving state, in the order the math returns it after Y; _store writes it
    stats: tuple[str, ...] = ("moving_mean", "moving_var")
    # Attributes that repr shows between num_dims and eps
    repr_args: tuple[str, ...] = ()

    def _setup(self, num_features: int, num_dims: int, eps: float, momentum: float,
               normalize: str) -> None:
        if not isinstance(num_dims, int) or not 2 <= num_dims <= 5:
            raise ValueError(f"num_dims must be 2, 3, 4 or 5, got {num_dims!r}")
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.num_features, self.num_dims = num_features, num_dims
        self.eps, self.momentum = eps, momentum
        self.normalize = check_normalize(normalize)
        shape = (1, num_features) + (1,) * (num_dims - 2)
        self.gamma = self.params.get("gamma", shape=shape, init=init.One())
        self.beta = self.params.get("beta", shape=shape, init=init.Zero())
        self._add_moving_stats(shape)

    def _add_moving_stats(self, shape) -> None:
        # The mean and variance, where stats names them; a subclass adds the rest
        for name, start in (("moving_mean", init.Zero()), ("moving_var", init.One())):
            if name in self.stats:
                self._add_state(name, shape, start)

    def _add_state(self, name: str, shape, start, **kwargs) -> None:
        # Moving state is a Parameter without gradient, so that
        # save_parameters/load_parameters and context moves carry it
        setattr(self, name, self.params.get(name, shape=shape, init=start, grad_req="null",
                                            differentiable=False, **kwargs))

    def _check_input(self, X) -> None:
        check_input(X, self.num_features, self.num_dims, self.gamma.dtype, self.dtypes)

    def _check(self, X) -> None:
        # Before anything is computed or stored: bad input leaves the state alone
        self._check_input(X)
        if autograd.is_training():
            warn_if_degenerate(X)

    def _store(self, *values) -> None:
        # Outside the recording: a write into an array that a recorded graph has
        # seen is refused. Only the copy on the value's context: with data
        # parallelism each device keeps its own statistics, as Gluon's BatchNorm
        # does (writing every copy would chain the devices' updates). copyto, not
        # Parameter.set_data, whose index assignment costs several times more
        with autograd.pause():
            for name, value in zip(self.stats, values):
                value.copyto(getattr(self, name).data(value.ctx))

    def __repr__(self) -> str:
        args = "".join(f", {name}={getattr(self, name)!r}" for name in self.repr_args)
        # Only a lite layer names its mode: the book's layer prints as it always did
        lite = "" if self.normalize == "full" else f", normalize={self.normalize!r}"
        return (f"{type(self).__name__}({self.num_features}, num_dims={self.num_dims}{args}, "
                f"eps={self.eps}, momentum={self.momentum}{lite})")


class BatchNorm(BatchNormBase, nn.Block):
    """The chapter's BatchNorm layer: ``batch_norm`` plus its parameters and state."""

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5,
                 momentum: float = 0.9, normalize: str = "full", **kwargs):
        super().__init__(**kwargs)
        self._setup(num_features, num_dims, eps, momentum, normalize)

    def forward(self, X):
        self._check(X)
        ctx = X.ctx
        # detach(): the stored statistics must stay outside the recorded graph,
        # else writing the new values back into them is refused
        Y, moving_mean, moving_var = batch_norm(
            X, self.gamma.data(ctx), self.beta.data(ctx), self.moving_mean.data(ctx).detach(),
            self.moving_var.data(ctx).detach(), eps=self.eps, momentum=self.momentum,
            normalize=self.normalize)
        if autograd.is_training():
            self._store(moving_mean, moving_var)
        return Y


class HybridBatchNorm(BatchNormBase, nn.HybridBlock):
    """``BatchNorm`` as a HybridBlock: ``hybridize()`` compiles the same math.

    The compiled graph returns the new moving statistics (``stats``), which
    ``forward`` stores; so hybridize it on its own or inside ``nn.Sequential``,
    never inside a hybridized ``HybridSequential``. A subclass extends
    ``_trace_key`` with what else its graph is built for.
    """

    # hybridize() with static_alloc and static_shape unless told otherwise
    static_graph = False

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5,
                 momentum: float = 0.9, normalize: str = "full", **kwargs):
        super().__init__(**kwargs)
        self._setup(num_features, num_dims, eps, momentum, normalize)
        self._traced_training = None

    def _trace_key(self, X) -> dict:
        """What the graph is traced for, kept as ``self._traced_<key>``; a change retraces."""
        # The mode is a Python branch in the graph: it retraces twice an epoch at most
        return {"training": autograd.is_training()}

    def hybridize(self, active=True, **kwargs):
        if self.static_graph:
            # The graph keeps its buffers between calls; another batch size is re-planned
            kwargs.setdefault("static_alloc", True)
            kwargs.setdefault("static_shape", kwargs["static_alloc"])
        super().hybridize(active, **kwargs)

    def forward(self, X):
        if isinstance(X, mx.sym.Symbol):
            raise TypeError(f"{type(self).__name__} cannot sit inside a hybridized "
                            "HybridSequential: use nn.Sequential, whose hybridize() compiles "
                            "each layer")
        self._check(X)
        key = self._trace_key(X)
        if any(getattr(self, f"_traced_{k}", None) != v for k, v in key.items()):
            self._clear_cached_op()
            for k, v in key.items():
                setattr(self, f"_traced_{k}", v)
        Y, *stats = super().forward(X)
        if self._traced_training:
            self._store(*stats)
        return Y

    def hybrid_forward(self, F, X, gamma, beta, moving_mean, moving_var):
        return batch_norm_graph(F, X, gamma, beta, moving_mean, moving_var, self.eps,
                                self.momentum, axes=channel_axes(self.num_dims),
                                training=self._traced_training, normalize=self.normalize)
