"""Training and evaluation in the spirit of d2l's ``train_ch6``, with a history; also over a
list of devices, as d2l's multi-GPU chapter (``scale.dist`` builds processes on it)."""

from __future__ import annotations

import dataclasses
import random
import sys
import time

import mxnet as mx
import numpy as onp
from mxnet import autograd, gluon, init, np

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
    # Figures measured on the trained net by an experiment (see lab.sweep)
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
    return float(_correct(y_hat, y))


def _correct(y_hat, y):
    # On the device, in float64: counts add up exactly, and nothing waits for the engine
    return (y_hat.argmax(axis=1).astype(y.dtype) == y).sum().astype("float64")


def evaluate_accuracy(net, data_iter, device: mx.Context | None = None) -> float:
    """Accuracy of ``net`` over ``data_iter`` in prediction mode."""
    device = device or try_gpu()
    correct, total = np.zeros(1, dtype="float64", ctx=device), 0
    for X, y in data_iter:
        X, y = X.as_in_ctx(device), y.as_in_ctx(device)
        correct = correct + _correct(forward(net, [X])[0], y)
        total += y.size
    return float(correct[0]) / total


def forward(net, Xs):
    """``net`` on each shard of ``Xs``, or on the list at once if it takes shards."""
    return net(Xs) if getattr(net, "takes_shards", False) else [net(X) for X in Xs]


def in_notebook() -> bool:
    """Whether printed output goes to a Jupyter notebook (where d2l's Animator can draw)."""
    # Redirecting stdout (as lab.sweep does) therefore silences the Animator too
    return type(sys.stdout).__module__.startswith("ipykernel")


def sgd_step(net, trainer, loss, X, y):
    """One recorded forward, backward and update on a batch; return ``(l, y_hat)``."""
    with autograd.record():
        y_hat = net(X)
        l = loss(y_hat, y)
    l.backward()
    trainer.step(X.shape[0])
    return l, y_hat


def data_parallel_step(net, trainer, loss, Xs, ys, batch_size: int):
    """``sgd_step`` on shards ``Xs, ys`` (one per device) of a batch of ``batch_size``."""
    with autograd.record():
        y_hats = forward(net, Xs)
        ls = [loss(y_hat, y) for y_hat, y in zip(y_hats, ys)]
    autograd.backward(ls)
    # The Trainer's kvstore sums the devices' (and workers') gradients; step
    # divides by the examples of the whole batch, as one device would
    trainer.step(batch_size)
    return ls, y_hats


def train_epoch(net, trainer, train_iter, devices: list[mx.Context], scale: int = 1):
    """One pass of SGD over ``train_iter``; ``(loss sum, correct, examples, seconds)``.

    ``scale``: how many processes each take such a batch (the step divides by all
    their examples). The sums stay on the device and are read once, at the end:
    reading them every batch would stop MXNet's engine from running ahead.
    """
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    sums, n = np.zeros(2, dtype="float64", ctx=devices[0]), 0
    tic = time.perf_counter()
    for X, y in train_iter:
        Xs = gluon.utils.split_and_load(X, devices, even_split=False)
        ys = gluon.utils.split_and_load(y, devices, even_split=False)
        ls, y_hats = data_parallel_step(net, trainer, loss, Xs, ys, X.shape[0] * scale)
        for l, y_hat, y_ in zip(ls, y_hats, ys):
            batch = np.stack([l.sum().astype("float64"), _correct(y_hat, y_)])
            sums = sums + batch.as_in_ctx(devices[0])
        n += X.shape[0]
    loss_sum, correct = (float(v) for v in sums)  # waits for the epoch's last step
    return loss_sum, correct, n, time.perf_counter() - tic


def train(net, train_iter, test_iter, num_epochs: int, lr: float,
          device: mx.Context | list[mx.Context] | None = None, seed: int | None = 0,
          hybridize: bool = False) -> History:
    """Train ``net`` with SGD on softmax cross-entropy (Xavier init); return its History.

    ``device``: one context, or a list that splits each batch (a net from
    ``scale.sync.sharded`` sees all the shards: synchronized BN). ``seed`` makes
    CPU runs repeatable. Draws d2l's Animator when printing to a notebook, logs a
    line per epoch elsewhere; redirect stdout to silence it.
    """
    check_train_args(num_epochs, lr)
    devices = _devices(device)
    trainer = prepare(net, devices, seed, hybridize,
                      lambda params: gluon.Trainer(params, "sgd", {"learning_rate": lr}))
    history = History(lr=lr, batch_size=batch_size_of(train_iter), num_epochs=num_epochs,
                      seed=seed, device=", ".join(str(d) for d in devices))
    return fit(net, trainer, train_iter, test_iter, devices, history)


def check_train_args(num_epochs: int, lr: float) -> None:
    """A ``ValueError`` for a rate or an epoch count that cannot train."""
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be at least 1, got {num_epochs}")


def prepare(net, devices: list[mx.Context], seed: int | None, hybridize: bool, make_trainer):
    """Seed, initialise (Xavier) and maybe hybridize ``net``; return ``make_trainer(params)``."""
    if seed is not None:
        seed_all(seed)
    net.initialize(init.Xavier(), ctx=devices, force_reinit=True)
    if hybridize:
        # The shapes repeat from batch to batch: keep the graph's memory between calls
        net.hybridize(static_alloc=True, static_shape=True)
    return make_trainer(net.collect_params())


def fit(net, trainer, train_iter, test_iter, devices: list[mx.Context], history: History,
        scale: int = 1, total=None, measure_test: bool = True) -> History:
    """``history.num_epochs`` epochs of ``train_epoch``, each logged into ``history``.

    For ``scale`` processes training together: ``total`` sums each epoch's figures
    over them, and only the one with ``measure_test`` evaluates (the others log NaN).
    """
    animator = _animator(history.num_epochs) if in_notebook() else None
    start = time.perf_counter()
    for epoch in range(history.num_epochs):
        figures = train_epoch(net, trainer, train_iter, devices, scale)
        loss_sum, correct, n, seconds = total(figures) if total else figures
        history.loss.append(loss_sum / n)
        history.train_acc.append(correct / n)
        history.test_acc.append(evaluate_accuracy(net, test_iter, devices[0]) if measure_test
                                else float("nan"))
        history.examples_per_sec.append(n / seconds)
        if animator:
            animator.add(epoch + 1, (history.loss[-1], history.train_acc[-1],
                                     history.test_acc[-1]))
        else:
            print(f"epoch {epoch + 1}/{history.num_epochs}: loss {history.loss[-1]:.3f}, "
                  f"train acc {history.train_acc[-1]:.3f}, test acc {history.test_acc[-1]:.3f}, "
                  f"{history.examples_per_sec[-1]:.0f} examples/s", flush=True)
    history.wall_s = time.perf_counter() - start
    print(history.summary())
    return history


def sgd_steps(net, batches, trainer, devices: list[mx.Context] | None = None,
              scale: int = 1) -> list[float]:
    """One SGD step on each of ``batches`` (an initialised net); the mean loss of each step.

    ``trainer``: a learning rate, or a ``gluon.Trainer``; ``devices`` and ``scale`` as
    in ``train_epoch``: for comparing runs step by step.
    """
    devices = _devices(devices)
    if not isinstance(trainer, gluon.Trainer):
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": trainer})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    losses = []
    for X, y in batches:
        Xs = gluon.utils.split_and_load(np.array(X), devices, even_split=False)
        ys = gluon.utils.split_and_load(np.array(y), devices, even_split=False)
        ls, _ = data_parallel_step(net, trainer, loss, Xs, ys, X.shape[0] * scale)
        losses.append(sum(float(l.sum()) for l in ls) / X.shape[0])
    return losses


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


def batch_size_of(data_iter) -> int:
    """The batch size of a Gluon ``DataLoader``; 0 (unknown) for other iterables."""
    return getattr(getattr(data_iter, "_batch_sampler", None), "_batch_size", 0)


def _devices(device) -> list[mx.Context]:
    """The list of devices to train on: ``device`` as a list, else ``try_gpu()``."""
    if device is None:
        return [try_gpu()]
    devices = list(device) if isinstance(device, (list, tuple)) else [device]
    if not devices or len(set(devices)) != len(devices):
        raise ValueError(f"device must be a context or a non-empty list of distinct contexts, "
                         f"got {device}")
    return devices


def _animator(num_epochs: int):
    from d2l import mxnet as d2l  # imported late: it pulls in matplotlib and IPython

    return d2l.Animator(xlabel="epoch", xlim=[1, num_epochs],
                        legend=["train loss", "train acc", "test acc"])
