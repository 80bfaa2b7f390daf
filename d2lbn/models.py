"""LeNet with batch normalisation, and the variants the notebooks compare."""

from __future__ import annotations

import warnings
from typing import Callable, Union

from mxnet.gluon import nn

from .fast import FastBatchNorm, compiled
from .layers import BatchNorm, HybridBatchNorm

NormFactory = Callable[[int, int], nn.Block]
Norm = Union[str, None, NormFactory]


class LayerwiseSequential(nn.Sequential):
    """``nn.Sequential`` whose ``hybridize()`` compiles each layer on its own, quietly."""

    def hybridize(self, active=True, **kwargs):
        with warnings.catch_warnings():
            # Gluon suggests HybridSequential; HybridBatchNorm needs layer-wise graphs
            warnings.filterwarnings("ignore", message="All children of this Sequential")
            super().hybridize(active, **kwargs)


def norm_factory(norm: Norm) -> NormFactory | None:
    """Turn ``'scratch' | 'hybrid' | 'gluon' | None | callable`` into a layer factory."""
    if norm is None:
        return None
    if callable(norm):
        return norm
    factories = {
        "scratch": lambda c, d: BatchNorm(c, num_dims=d),
        "hybrid": lambda c, d: HybridBatchNorm(c, num_dims=d),
        "gluon": lambda c, d: nn.BatchNorm(in_channels=c),
        "fast": lambda c, d: FastBatchNorm(c, num_dims=d),
        "cpp": lambda c, d: compiled.compiled_batch_norm(c, num_dims=d),
    }
    if norm not in factories:
        raise ValueError(f"norm must be one of {sorted(factories)}, None or a callable "
                         f"(num_features, num_dims) -> Block; got {norm!r}")
    return factories[norm]


def lenet(norm: Norm = "scratch", placement: str = "before", activation: str = "sigmoid",
          dropout: float | tuple[float, float] = 0.0, use_bias: bool = True,
          norm_conv: bool = True, norm_dense: bool = True) -> nn.Sequential:
    """The chapter's LeNet: BN between each conv/dense layer and its activation.

    ``placement='after'`` puts BN after the activation instead; ``dropout`` adds
    Dropout after the two hidden dense layers (a pair: a rate for each);
    ``use_bias=False`` drops the bias that BN's beta makes redundant;
    ``norm_conv``/``norm_dense`` choose where BN goes.
    """
    if placement not in ("before", "after"):
        raise ValueError(f"placement must be 'before' or 'after', got {placement!r}")
    rates = tuple(dropout) if isinstance(dropout, (tuple, list)) else (dropout, dropout)
    if len(rates) != 2 or not all(0.0 <= p < 1.0 for p in rates):
        raise ValueError(f"dropout must be a rate in [0, 1) or two of them, got {dropout}")
    make_norm = norm_factory(norm)
    # Gluon's own layers compile into one graph, and so does the C++ one (it updates
    # its statistics in place; without a compiler it falls back to "fast"); ours that
    # return them, and callables, compile layer by layer; the book's Block cannot
    if norm in (None, "gluon") or (norm == "cpp" and compiled.available()):
        net = nn.HybridSequential()
    else:
        net = nn.Sequential() if norm == "scratch" else LayerwiseSequential()

    def stage(layer, channels, num_dims, with_norm, drop=0.0):
        act = nn.Activation(activation)
        bn = make_norm(channels, num_dims) if make_norm and with_norm else None
        parts = [layer, bn, act] if placement == "before" else [layer, act, bn]
        net.add(*[p for p in parts if p is not None])
        if drop:
            net.add(nn.Dropout(drop))

    stage(nn.Conv2D(6, kernel_size=5, use_bias=use_bias), 6, 4, norm_conv)
    net.add(nn.MaxPool2D(pool_size=2, strides=2))
    stage(nn.Conv2D(16, kernel_size=5, use_bias=use_bias), 16, 4, norm_conv)
    net.add(nn.MaxPool2D(pool_size=2, strides=2))
    stage(nn.Dense(120, use_bias=use_bias), 120, 2, norm_dense, rates[0])
    stage(nn.Dense(84, use_bias=use_bias), 84, 2, norm_dense, rates[1])
    net.add(nn.Dense(10))
    return net



def summary(net: nn.Sequential) -> str:
    """The layers of ``net`` in one line, e.g. ``conv 6 > BN > sigmoid > pool > ...``."""
    def name(layer: nn.Block) -> str:
        if isinstance(layer, (nn.Conv2D, nn.Dense)):
            kind = "conv" if isinstance(layer, nn.Conv2D) else "dense"
            return f"{kind} {layer.weight.shape[0]}" + (" (no bias)" if layer.bias is None else "")
        if isinstance(layer, (nn.MaxPool2D, nn.AvgPool2D)):
            return "pool"
        if isinstance(layer, nn.Activation):
            return layer._act_type  # Gluon keeps no public name for it
        if isinstance(layer, nn.Dropout):
            return f"dropout {layer._rate:g}"
        if isinstance(layer, nn.BatchNorm) and layer._kwargs.get("use_global_stats"):
            return "BN (frozen statistics)"
        kind = type(layer).__name__
        return "BN" if kind.endswith("BatchNorm") else kind
    return " > ".join(name(layer) for layer in net)
