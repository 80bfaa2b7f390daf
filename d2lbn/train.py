"""Training and evaluation in the spirit of d2l's ``train_ch6``, with a history."""

from __future__ import annotations

import dataclasses
import random
import sys
import time

import mxnet as mx
import numpy as onp
from mxnet import autograd, gluon, init

_noted_cpu = False


def try_gpu(i: int = 0) -> mx.Context:
    """``gpu(i)`` if it exists, else ``cpu()`` with a one-line note (once)."""
    global _noted_cpu
    if mx.context.num_gpus() > i:
        return mx.gpu(i)
    if not _noted_cpu:
        _noted_cpu = True
        print("[d2lbn] no GPU found: running on cpu(0)")
    return mx.cpu()


def seed_all(seed: int) -> None:
    """Seed every generator a run draws from: Python, NumPy (shuffling) and MXNet."""
    random.seed(seed)
    onp.random.seed(seed)
    mx.random.seed(seed, ctx="all")


@dataclasses.dataclass
class History:
    """Per-epoch record of one training run, plus its settings."""

    lr: float
    batch_size: int
    num_epochs: int
    seed: int | None
    device: str
    loss: list[float] = dataclasses.field(default_factory=list)
    train_acc: list[float] = dataclasses.field(default_factory=list)
    test_acc: list[float] = dataclasses.field(default_factory=list)
    examples_per_sec: list[float] = dataclasses.field(default_factory=list)
    wall_s: float = 0.0
    # Figures measured on the trained net by an experiment (see experiments.sweep)
    extra: dict = dataclasses.field(default_factory=dict)

    def final(self) -> dict:
        """The last epoch's loss, accuracies and throughput."""
        return {"loss": self.loss[-1], "train_acc": self.train_acc[-1],
                "test_acc": self.test_acc[-1], "examples_per_sec": self.examples_per_sec[-1]}

    def summary(self) -> str:
        """The book's two result lines for this run."""
        f = self.final()
        return (f"loss {f['loss']:.3f}, train acc {f['train_acc']:.3f}, test acc "
                f"{f['test_acc']:.3f}\n{f['examples_per_sec']:.1f} examples/sec on {self.device}")


def accuracy(y_hat, y) -> float:
    """Number of correct predictions (not a fraction, so batches can be summed)."""
    return float((y_hat.argmax(axis=1).astype(y.dtype) == y).sum())


def evaluate_accuracy(net, data_iter, device: mx.Context | None = None) -> float:
    """Accuracy of ``net`` over ``data_iter`` in prediction mode."""
    device = device or try_gpu()
    correct, total = 0.0, 0
    for X, y in data_iter:
        X, y = X.as_in_ctx(device), y.as_in_ctx(device)
        correct += accuracy(net(X), y)
        total += y.size
    return correct / total


def in_notebook() -> bool:
    """Whether we run inside a Jupyter kernel (where d2l's Animator can draw)."""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def sgd_step(net, trainer, loss, X, y):
    """One recorded forward, backward and update on a batch; return ``(l, y_hat)``."""
    with autograd.record():
        y_hat = net(X)
        l = loss(y_hat, y)
    l.backward()
    trainer.step(X.shape[0])
    return l, y_hat


def train(net, train_iter, test_iter, num_epochs: int, lr: float,
          device: mx.Context | None = None, seed: int | None = 0,
          animate: bool | None = None, hybridize: bool = False,
          quiet: bool = False) -> History:
    """Train ``net`` with SGD on softmax cross-entropy (Xavier init); return its History.

    Draws d2l's Animator in a notebook (``animate=None``), logs one line per epoch
    elsewhere (``quiet``: neither, nor the closing summary). ``seed`` makes CPU runs
    repeatable.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be at least 1, got {num_epochs}")
    device = device or try_gpu()
    if seed is not None:
        seed_all(seed)
    net.initialize(init.Xavier(), ctx=device, force_reinit=True)
    if hybridize:
        net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    history = History(lr=lr, batch_size=_batch_size(train_iter),
                      num_epochs=num_epochs, seed=seed, device=str(device))
    animator = _animator(num_epochs) if (in_notebook() if animate is None else animate) else None
    start = time.perf_counter()
    for epoch in range(num_epochs):
        loss_sum, correct, n, busy = 0.0, 0.0, 0, 0.0
        for X, y in train_iter:
            tic = time.perf_counter()
            X, y = X.as_in_ctx(device), y.as_in_ctx(device)
            l, y_hat = sgd_step(net, trainer, loss, X, y)
            # float() waits for the step to finish, so the timer sees real work
            loss_sum += float(l.sum())
            correct += accuracy(y_hat, y)
            n += X.shape[0]
            busy += time.perf_counter() - tic
        history.loss.append(loss_sum / n)
        history.train_acc.append(correct / n)
        history.test_acc.append(evaluate_accuracy(net, test_iter, device))
        history.examples_per_sec.append(n / busy)
        if animator:
            animator.add(epoch + 1, (history.loss[-1], history.train_acc[-1],
                                     history.test_acc[-1]))
        elif not quiet:
            print(f"epoch {epoch + 1}/{num_epochs}: loss {history.loss[-1]:.3f}, train acc "
                  f"{history.train_acc[-1]:.3f}, test acc {history.test_acc[-1]:.3f}, "
                  f"{history.examples_per_sec[-1]:.0f} examples/s", flush=True)
    history.wall_s = time.perf_counter() - start
    if not quiet:
        print(history.summary())
    return history


def test_acc_after_steps(net, train_iter, test_iter, lr: float, checkpoints: list[int],
                         device: mx.Context | None = None) -> list[float]:
    """Test accuracy after each number of SGD steps in ``checkpoints`` (on an initialised net).

    For the first steps of training, where per-epoch figures say nothing.
    """
    device = device or try_gpu()
    checkpoints = sorted(set(checkpoints))
    if not checkpoints or checkpoints[0] < 1:
        raise ValueError(f"checkpoints must be positive step counts, got {checkpoints}")
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    accs = []
    for step, (X, y) in enumerate(step_batches(train_iter, checkpoints[-1], device), 1):
        sgd_step(net, trainer, loss, X, y)
        if step in checkpoints:
            accs.append(evaluate_accuracy(net, test_iter, device))
    return accs


def step_batches(train_iter, num_steps: int, device: mx.Context):
    """Yield ``num_steps`` batches on ``device``, passing over ``train_iter`` as often as needed."""
    step = 0
    while step < num_steps:
        start = step
        for X, y in train_iter:
            yield X.as_in_ctx(device), y.as_in_ctx(device)
            step += 1
            if step == num_steps:
                return
        if step == start:
            raise ValueError("train_iter gave no batches")


def _batch_size(data_iter) -> int:
    # Gluon's DataLoader keeps it on its batch sampler; other iterables: 0 (unknown)
    return getattr(getattr(data_iter, "_batch_sampler", None), "_batch_size", 0)


def _animator(num_epochs: int):
    from d2l import mxnet as d2l  # imported late: it pulls in matplotlib and IPython

    return d2l.Animator(xlabel="epoch", xlim=[1, num_epochs],
                        legend=["train loss", "train acc", "test acc"])
