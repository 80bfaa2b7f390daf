"""Training and evaluation in the spirit of d2l's ``train_ch6``, with a history.

Also data-parallel, as d2l's multi-GPU chapter: over a list of devices in one
process, and over processes with a ``dist_sync`` kvstore (``d2lbn.scale.dist``).
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time

import mxnet as mx
import numpy as onp
from mxnet import autograd, gluon, init, np

from .scale import dist, sync

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
        correct += accuracy(forward(net, [X])[0], y)
        total += y.size
    return correct / total


def forward(net, Xs):
    """``net`` on each shard of ``Xs``, or on the list at once if it takes shards."""
    return net(Xs) if isinstance(net, sync.ShardedSequential) else [net(X) for X in Xs]


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


def train(net, train_iter, test_iter, num_epochs: int, lr: float,
          device: mx.Context | None = None, seed: int | None = 0,
          animate: bool | None = None, hybridize: bool = False,
          quiet: bool = False, devices: list[mx.Context] | None = None,
          kvstore="device") -> History:
    """Train ``net`` with SGD on softmax cross-entropy (Xavier init); return its History.

    Draws d2l's Animator in a notebook (``animate=None``), logs one line per epoch
    elsewhere (``quiet``: neither, nor the closing summary). ``seed`` makes CPU runs
    repeatable. ``devices`` (instead of ``device``) splits each batch over several
    devices; a net from ``sync.sharded`` sees all the shards (synchronized BN), any
    other net each shard alone (BN per device). ``kvstore`` is the Trainer's: one
    from ``dist.kvstore()`` also sums over worker processes, each of which passes
    its own share of the data (``dist.shard``); rank 0 then measures test accuracy.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be at least 1, got {num_epochs}")
    devices = _devices(device, devices)
    num_workers, rank = _workers(kvstore)
    if seed is not None:
        seed_all(seed)
    net.initialize(init.Xavier(), ctx=devices, force_reinit=True)
    if hybridize:
        net.hybridize()
    trainer = _trainer(net, lr, kvstore)
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    where = str(devices[0]) if len(devices) == 1 else ", ".join(str(d) for d in devices)
    history = History(lr=lr, batch_size=_batch_size(train_iter) * num_workers,
                      num_epochs=num_epochs, seed=seed,
                      device=where if num_workers == 1 else f"{num_workers} workers x {where}")
    animator = _animator(num_epochs) if (in_notebook() if animate is None else animate) else None
    start = time.perf_counter()
    for epoch in range(num_epochs):
        loss_sum, correct, n, busy = 0.0, 0.0, 0, 0.0
        for X, y in train_iter:
            tic = time.perf_counter()
            Xs = gluon.utils.split_and_load(X, devices, even_split=False)
            ys = gluon.utils.split_and_load(y, devices, even_split=False)
            # Every worker's batch has the same size (dist.shard sees to it)
            ls, y_hats = data_parallel_step(net, trainer, loss, Xs, ys,
                                            X.shape[0] * num_workers)
            # float() waits for the step to finish, so the timer sees real work
            loss_sum += sum(float(l.sum()) for l in ls)
            correct += sum(accuracy(y_hat, y) for y_hat, y in zip(y_hats, ys))
            n += X.shape[0]
            busy += time.perf_counter() - tic
        if num_workers > 1:
            loss_sum, correct, n = _sum_over_workers(kvstore, [loss_sum, correct, n])
        history.loss.append(loss_sum / n)
        history.train_acc.append(correct / n)
        # One replica measures: with BN per worker the others' statistics differ
        history.test_acc.append(evaluate_accuracy(net, test_iter, devices[0]) if rank == 0
                                else float("nan"))
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


def sgd_steps(net, batches, lr: float, devices: list[mx.Context] | None = None,
              kvstore="device") -> list[float]:
    """One SGD step on each of ``batches`` (an initialised net); the mean loss of each step.

    ``devices`` and ``kvstore`` as in ``train``: for comparing runs step by step.
    """
    devices = _devices(None, devices)
    num_workers, _ = _workers(kvstore)
    trainer = _trainer(net, lr, kvstore)
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    losses = []
    for X, y in batches:
        Xs = gluon.utils.split_and_load(np.array(X), devices, even_split=False)
        ys = gluon.utils.split_and_load(np.array(y), devices, even_split=False)
        ls, _ = data_parallel_step(net, trainer, loss, Xs, ys, X.shape[0] * num_workers)
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


def _batch_size(data_iter) -> int:
    # Gluon's DataLoader keeps it on its batch sampler; other iterables: 0 (unknown)
    return getattr(getattr(data_iter, "_batch_sampler", None), "_batch_size", 0)


def _devices(device, devices) -> list[mx.Context]:
    """The list of devices to train on, from ``train``'s two ways of naming them."""
    if devices is None:
        return [device or try_gpu()]
    if device is not None:
        raise ValueError(f"give device or devices, not both (got {device} and {devices})")
    devices = list(devices)
    if not devices or len(set(devices)) != len(devices):
        raise ValueError(f"devices must be a non-empty list of distinct contexts, got {devices}")
    return devices


def _workers(kvstore) -> tuple[int, int]:
    """``(number of worker processes, this one's rank)`` of the run ``kvstore`` belongs to."""
    if isinstance(kvstore, mx.kv.KVStore) and "dist" in kvstore.type:
        if kvstore.type != "dist_sync":
            raise ValueError(f"only the dist_sync kvstore keeps workers in step, got "
                             f"{kvstore.type}")
        return kvstore.num_workers, kvstore.rank
    return 1, 0


def _trainer(net, lr: float, kvstore) -> gluon.Trainer:
    """SGD on ``net``'s parameters; gradients summed over devices (and workers) by ``kvstore``."""
    if _workers(kvstore)[0] == 1 and not isinstance(kvstore, mx.kv.KVStore):
        return gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr}, kvstore=kvstore)
    # Workers update their own copies from the summed gradients: the servers
    # then only add, which is what the sums of synchronized BN need from them too
    return _SettledTrainer(net.collect_params(), "sgd", {"learning_rate": lr}, kvstore=kvstore,
                           update_on_kvstore=False)


class _SettledTrainer(gluon.Trainer):
    """``gluon.Trainer`` that calls the kvstore only when nothing else in the process does."""

    def step(self, batch_size, ignore_stale_grad=False):
        # MXNet runs an autograd.Function's backward on a thread of its own, after
        # backward() has returned: there dist.all_reduce sums the gradients of
        # synchronized BN through the kvstore, which must not be called from two
        # threads at once (apache/mxnet#6467). Overlapping calls left a worker
        # waiting for ever on a sum the others had finished
        mx.nd.waitall()
        super().step(batch_size, ignore_stale_grad)

    def _init_params(self):
        super()._init_params()
        # MXNet 1.9's first step pulls rank 0's parameters into every worker and
        # then pushes the gradients under the same keys, and nothing orders the two.
        # With update_on_kvstore=False a push that overtakes the pull makes the
        # servers answer it with summed gradients, which become that worker's
        # parameters (3 runs in 8 of a 2-worker LeNet here). So wait for the pull
        mx.nd.waitall()


def _sum_over_workers(kvstore, values: list[float]) -> list[float]:
    """Python numbers summed over the workers of a ``dist_sync`` run."""
    total = dist.all_reduce([np.array(values, dtype="float64")], "train/epoch", kv=kvstore)[0]
    return [float(v) for v in total]


def _animator(num_epochs: int):
    from d2l import mxnet as d2l  # imported late: it pulls in matplotlib and IPython

    return d2l.Animator(xlabel="epoch", xlim=[1, num_epochs],
                        legend=["train loss", "train acc", "test acc"])
