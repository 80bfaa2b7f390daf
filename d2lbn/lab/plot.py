"""The figures the notebooks show."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as onp
from matplotlib.ticker import MaxNLocator

from ..train import History

LABELS = {"loss": "training loss", "train_acc": "train accuracy", "test_acc": "test accuracy",
          "examples_per_sec": "examples/s"}


def gamma_beta(bn, title: str = "first BN layer"):
    """Bar chart of a BN layer's learned scale gamma and shift beta, per channel."""
    gamma = bn.gamma.data().asnumpy().ravel()
    beta = bn.beta.data().asnumpy().ravel()
    channels = onp.arange(len(gamma))
    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.bar(channels - 0.2, gamma, width=0.4, label="gamma (scale)")
    ax.bar(channels + 0.2, beta, width=0.4, label="beta (shift)")
    ax.axhline(1, color="gray", lw=0.8, ls="--")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="channel", xticks=channels, title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def whole_ticks(ax, x) -> None:
    """Whole-number ticks on a linear x axis whose values are all whole (epochs, steps)."""
    values = onp.asarray(list(x), dtype=float)
    if ax.get_xscale() == "linear" and values.size and onp.all(values == onp.round(values)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def curves(groups: dict[str, list[History]], metrics=("loss", "test_acc")):
    """Per-epoch curves, one thin line per seed and one colour per group."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for color, (name, runs) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"],
                                       groups.items()):
            for i, h in enumerate(runs):
                values = getattr(h, metric)
                ax.plot(range(1, len(values) + 1), values, color=color, lw=1, alpha=0.8,
                        label=f"{name} ({len(runs)} seeds)" if i == 0 else None)
        ax.set(xlabel="epoch", ylabel=LABELS[metric])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def lines(x, groups: dict[str, list[list[float]]], xlabel: str, ylabel: str,
          logx: bool = False, unit: str = "runs"):
    """One thin line per run (a seed, a device: ``unit``) against ``x``, a colour per group."""
    fig, ax = plt.subplots(figsize=(5, 3))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, (name, runs) in zip(colors, groups.items()):
        for i, y in enumerate(runs):
            ax.plot(x[:len(y)], y, color=color, lw=1, marker=".", alpha=0.8,
                    label=f"{name} ({len(runs)} {unit})" if i == 0 else None)
    ax.set(xlabel=xlabel, ylabel=ylabel, xscale="log" if logx else "linear")
    whole_ticks(ax, x)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def barh(values: dict[str, float], xlabel: str, log: bool = False):
    """Horizontal bars, one per named value, in the given order from the top."""
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(values) + 0.9))
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    ax.set(xlabel=xlabel, xscale="log" if log else "linear")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def panels(x, metrics: dict[str, dict[str, list[list[float]]]], xlabel: str, ncols: int = 3,
           logy: tuple[str, ...] = ()):
    """One small plot per metric: per group, one thin line per run against ``x``."""
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.7 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (metric, groups) in zip(axes.flat, metrics.items()):
        for color, (name, runs) in zip(colors, groups.items()):
            for i, y in enumerate(runs):
                ax.plot(x[:len(y)], y, color=color, lw=1, alpha=0.8,
                        label=f"{name} ({len(runs)} runs)" if i == 0 else None)
        ax.set(xlabel=xlabel, title=metric, yscale="log" if metric in logy else "linear")
        whole_ticks(ax, x)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    return fig
