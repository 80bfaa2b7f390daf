"""Gluon Blocks around the functions in ``functional``: parameters, state, checks."""

from __future__ import annotations

import warnings

import mxnet as mx
import numpy as onp
from mxnet import autograd, init
from mxnet.gluon import nn

from .functional import (
    DTYPES,
    batch_norm,
    batch_norm_graph,
    channel_axes,
    check_batch,
    check_normalize,
)


def check_input(X, num_features: int, num_dims: int, dtype=None, dtypes=DTYPES) -> None:
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
    """Shared parameters and checks of the two BatchNorm Blocks."""

    # The input dtypes the layer computes in; the parameters' dtype must match
    dtypes = DTYPES

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
        # Moving statistics are Parameters without gradient, so that
        # save_parameters/load_parameters and context moves carry them
        self.moving_mean = self.params.get("moving_mean", shape=shape, init=init.Zero(),
                                           grad_req="null", differentiable=False)
        self.moving_var = self.params.get("moving_var", shape=shape, init=init.One(),
                                          grad_req="null", differentiable=False)

    def _check_input(self, X) -> None:
        check_input(X, self.num_features, self.num_dims, self.gamma.dtype, self.dtypes)

    def _check(self, X) -> None:
        # Before anything is computed or stored: bad input leaves the state alone
        self._check_input(X)
        if autograd.is_training():
            warn_if_degenerate(X)

    def _store(self, moving_mean, moving_var) -> None:
        # Outside the recording: a write into an array that a recorded graph has
        # seen is refused, and the statistics need no gradient anyway. Only the
        # copy on this batch's context: with data parallelism each device keeps
        # its own statistics, as Gluon's BatchNorm does (writing every copy would
        # chain the devices' updates). copyto, not Parameter.set_data: its index
        # assignment costs 0.2 ms of Python per call against 0.035 ms
        with autograd.pause():
            for param, value in ((self.moving_mean, moving_mean), (self.moving_var, moving_var)):
                value.copyto(param.data(value.ctx))

    def __repr__(self) -> str:
        # Only a lite layer names its mode: the book's layer prints as it always did
        lite = "" if self.normalize == "full" else f", normalize={self.normalize!r}"
        return (f"{type(self).__name__}({self.num_features}, num_dims={self.num_dims}, "
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

    The compiled graph returns the new moving statistics to Python, which stores
    them, so hybridize it on its own (or inside an ``nn.Sequential``, whose
    ``hybridize()`` compiles each child): a ``HybridSequential`` parent would try
    to fold it into one graph that cannot write its state back.
    """

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5,
                 momentum: float = 0.9, normalize: str = "full", **kwargs):
        super().__init__(**kwargs)
        self._setup(num_features, num_dims, eps, momentum, normalize)
        self._traced_training = None

    def forward(self, X):
        if isinstance(X, mx.sym.Symbol):
            raise TypeError("HybridBatchNorm cannot sit inside a hybridized HybridSequential: "
                            "use nn.Sequential, whose hybridize() compiles each layer")
        self._check(X)
        training = autograd.is_training()
        # The mode is a Python branch, fixed when the graph is traced:
        # retrace when it changes (twice an epoch at most)
        if training != self._traced_training:
            self._clear_cached_op()
            self._traced_training = training
        Y, moving_mean, moving_var = super().forward(X)
        if training:
            self._store(moving_mean, moving_var)
        return Y

    def hybrid_forward(self, F, X, gamma, beta, moving_mean, moving_var):
        return batch_norm_graph(F, X, gamma, beta, moving_mean, moving_var, self.eps,
                                self.momentum, axes=channel_axes(self.num_dims),
                                training=self._traced_training, normalize=self.normalize)
