"""Data parallelism over processes with MXNet's parameter server (``dist_sync``), on one machine.

A run has three roles. The scheduler introduces the others to each other; the
servers hold one sum per key; the workers train, each on its own shard of the
data, and push their gradients to the servers, which add them up and hand the
total back. MXNet reads each process's role from ``DMLC_*`` environment
variables when it is imported: a scheduler or a server never returns from
``import mxnet``, a worker joins when it creates the kvstore.

``launch`` starts every role on 127.0.0.1, runs a function in each worker and
returns their results; it stops them all on return, on error and on Ctrl-C, and
fails as soon as one of them dies. ``all_reduce`` sums arrays over the workers
inside autograd, which is what synchronized BN across processes needs
(``sync.SyncBatchNorm(..., reduce=dist.all_reduce)``). ``train`` and
``sgd_steps`` are the chapter's LeNet trained that way.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import io
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import weakref
from pathlib import Path

import cloudpickle
import mxnet as mx
import numpy as onp
from mxnet import autograd, gluon

from . import sync

HOST = "127.0.0.1"
# The Trainer numbers its parameters' keys from 0; ours start far above
KEY_BASE = 1 << 20
POLL_S = 0.1  # how often the launcher looks at its processes
STOP_S = 5.0  # how long a role gets to exit after SIGTERM, before SIGKILL
STACKS_S = 1.0  # how long a hung worker gets to write its stacks
TAIL = 3000  # characters of a failed role's error output quoted in the error

_kvstore = None
_keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class WorkerError(RuntimeError):
    """A role of a distributed run failed; the message quotes its error output."""


# ---------------------------------------------------------------- inside a worker

def kvstore() -> mx.kv.KVStore:
    """This worker's ``dist_sync`` kvstore (one per process, created on first use)."""
    global _kvstore
    if _kvstore is None:
        if os.environ.get("DMLC_ROLE") != "worker":
            raise RuntimeError("dist.kvstore() works in a worker started by dist.launch "
                               "(DMLC_ROLE=worker), not here")
        _kvstore = mx.kv.create("dist_sync")
    return _kvstore


def all_reduce(arrays, tag: str, kv: mx.kv.KVStore | None = None):
    """The sum of ``arrays`` (one per device) over every device of every worker, on each device.

    Recorded by autograd, as ``sync.all_reduce``. ``tag`` names the quantity: every
    worker must reduce the same tags, with the same shapes, in the same order.
    """
    kv = kvstore() if kv is None else kv
    ctx = arrays[0].ctx
    local = arrays[0]
    for a in arrays[1:]:
        local = local + a.as_in_ctx(ctx)
    total = _SumOverWorkers(kv, _key(kv, tag, local), _key(kv, tag + "/grad", local))(local)
    return [total] + [total.as_in_ctx(a.ctx) for a in arrays[1:]]


class _SumOverWorkers(autograd.Function):
    """Sum over workers; its gradient is the sum of the workers' gradients of that sum."""

    # Each worker's loss depends on the total through its own copy, so the
    # gradient that reaches one worker's input is every copy's gradient, summed

    def __init__(self, kv, key: int, grad_key: int):
        super().__init__()
        self.kv, self.key, self.grad_key = kv, key, grad_key

    def forward(self, x):
        return self._sum(self.key, x)

    def backward(self, dy):
        return self._sum(self.grad_key, dy)

    def _sum(self, key: int, a):
        total = a.copy()  # a buffer for the answer
        # A copy to send: on the CPU the kvstore pulls into the array it pushed
        self.kv.pushpull(key, a.copy(), out=total)
        return total


def _key(kv, tag: str, like) -> int:
    """The kvstore key of ``tag``, initialised (a barrier of all workers) on first use."""
    keys = _keys.setdefault(kv, {})
    if tag not in keys:
        keys[tag] = KEY_BASE + len(keys)
        kv.init(keys[tag], mx.nd.zeros(like.shape, dtype=like.dtype))
    return keys[tag]


class _ShardSampler(gluon.data.Sampler):
    """Indices ``start, ..., start + length - 1``, shuffled on each pass if ``shuffle``."""

    def __init__(self, start: int, length: int, shuffle: bool):
        self._start, self._length, self._shuffle = start, length, shuffle

    def __iter__(self):
        order = onp.random.permutation(self._length) if self._shuffle else range(self._length)
        return iter([self._start + int(i) for i in order])

    def __len__(self):
        return self._length


def shard(data_iter: gluon.data.DataLoader, rank: int, num_workers: int):
    """Worker ``rank``'s slice of ``data_iter``: its examples, in batches ``1/num_workers`` as big.

    Every worker gets as many examples (the last ``len % num_workers`` are left out),
    so that all take the same number of steps of the same size; a worker that
    took one step more would wait for the others for ever.
    """
    if not 0 <= rank < num_workers:
        raise ValueError(f"rank must lie in [0, {num_workers}), got {rank}")
    sampler = data_iter._batch_sampler
    batch_size, last_batch = sampler._batch_size, sampler._last_batch
    if batch_size % num_workers:
        raise ValueError(f"a batch of {batch_size} does not split evenly over {num_workers} "
                         "workers")
    length = len(data_iter._dataset) // num_workers
    shuffle = isinstance(sampler._sampler, gluon.data.RandomSampler)
    batches = gluon.data.BatchSampler(_ShardSampler(rank * length, length, shuffle),
                                      batch_size // num_workers, last_batch)
    return gluon.data.DataLoader(data_iter._dataset, batch_sampler=batches,
                                 batchify_fn=data_iter._batchify_fn)


def lenet(norm, sync_bn: bool):
    """The chapter's LeNet; ``sync_bn``: its BN synchronized over the workers."""
    from .. import models

    net = models.lenet(norm)
    return sync.sharded(net, reduce=all_reduce) if sync_bn else net


# ---------------------------------------------------------------- the chapter's LeNet, N workers

def train(norm, train_iter, test_iter, num_epochs: int, lr: float, num_workers: int = 2,
          sync_bn: bool = False, seed: int | None = 0, hybridize: bool = False,
          quiet: bool = False, save: str | os.PathLike | None = None,
          timeout: float | None = None):
    """``train.train`` of ``models.lenet(norm)`` in ``num_workers`` processes; rank 0's History.

    ``train_iter``'s batch is the global batch: each worker takes its shard of
    the examples and ``1/num_workers`` of each batch. BN is per worker, or
    synchronized over the workers with ``sync_bn`` (``norm`` must then be one of
    our BN layers, e.g. ``'scratch'``). Rank 0 prints the per-epoch lines unless
    ``quiet``. ``save``: where rank 0 saves the trained parameters.
    """
    results = launch(_train_worker, num_workers, timeout=timeout, norm=norm, sync_bn=sync_bn,
                     train_iter=train_iter, test_iter=test_iter, num_epochs=num_epochs, lr=lr,
                     seed=seed, hybridize=hybridize, quiet=quiet,
                     save=None if save is None else str(save))
    return results[0]


def _train_worker(norm, sync_bn, train_iter, test_iter, num_epochs, lr, seed, hybridize, quiet,
                  save):
    from .. import train as training

    kv = kvstore()
    training.check_train_args(num_epochs, lr)
    net = lenet(norm, sync_bn)
    devices = [mx.cpu()]
    trainer = training.prepare(net, devices, seed, hybridize, lambda ps: trainer_for(ps, lr))
    history = training.History(lr=lr, batch_size=training.batch_size_of(train_iter),
                               num_epochs=num_epochs, seed=seed,
                               device=f"{kv.num_workers} workers x {devices[0]}")

    def total(figures):
        # MXNet 1.9.1's dist_sync kvstore adds in float32 whatever the dtype: exact for the
        # counts (below 2**24), about 7 significant digits for the loss sum
        loss_sum, correct, n, seconds = figures
        sums = all_reduce([mx.np.array([loss_sum, correct, n], dtype="float64")], "train/epoch")
        return (*(float(v) for v in sums[0]), seconds)

    # Rank 0 speaks for the run; with BN per worker the others' statistics differ anyway
    with contextlib.redirect_stdout(sys.stdout if kv.rank == 0 and not quiet else io.StringIO()):
        training.fit(net, trainer, shard(train_iter, kv.rank, kv.num_workers), test_iter, devices,
                     history, scale=kv.num_workers, total=total, measure_test=kv.rank == 0)
    if save is not None and kv.rank == 0:
        net.save_parameters(save)
    return history


def trainer_for(params, lr: float) -> gluon.Trainer:
    """SGD whose gradients this run's ``dist_sync`` kvstore sums over the workers."""
    # Workers update their own copies from the summed gradients: the servers
    # then only add, which is what the sums of synchronized BN need from them too
    return _SettledTrainer(params, "sgd", {"learning_rate": lr}, kvstore=kvstore(),
                           update_on_kvstore=False)


class _SettledTrainer(gluon.Trainer):
    """``gluon.Trainer`` that calls the kvstore only when nothing else in the process does."""

    def step(self, batch_size, ignore_stale_grad=False):
        # MXNet runs an autograd.Function's backward on a thread of its own, after
        # backward() has returned: there all_reduce sums the gradients of
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


def sgd_steps(norm, batches, lr: float, num_workers: int = 2, sync_bn: bool = False,
              seed: int = 0, timeout: float | None = None):
    """``train.sgd_steps`` of ``models.lenet(norm)`` in ``num_workers`` processes.

    Each worker takes its ``1/num_workers`` of every batch in ``batches``. Returns
    the mean loss of each step over the whole batch, and rank 0's parameters
    after the last step (NumPy arrays, in the order of ``collect_params()``).
    """
    batches = [(_numpy(X), _numpy(y)) for X, y in batches]
    for X, _ in batches:
        if X.shape[0] % num_workers:
            raise ValueError(f"a batch of {X.shape[0]} does not split evenly over "
                             f"{num_workers} workers")
    results = launch(_sgd_steps_worker, num_workers, timeout=timeout, norm=norm, batches=batches,
                     lr=lr, sync_bn=sync_bn, seed=seed)
    # Equal shards: the whole batch's mean loss is the mean of the workers' means
    losses = onp.mean([losses for losses, _ in results], axis=0)
    return [float(l) for l in losses], results[0][1]


def _sgd_steps_worker(norm, batches, lr, sync_bn, seed):
    from .. import train as training

    kv = kvstore()
    training.seed_all(seed)
    net = lenet(norm, sync_bn)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    mine = [(onp.split(X, kv.num_workers)[kv.rank], onp.split(y, kv.num_workers)[kv.rank])
            for X, y in batches]
    losses = training.sgd_steps(net, mine, trainer_for(net.collect_params(), lr), [mx.cpu()],
                                scale=kv.num_workers)
    return losses, parameters(net)


def parameters(net) -> list[onp.ndarray]:
    """``net``'s parameters as NumPy arrays (first device), in ``collect_params()`` order."""
    return [p.data().asnumpy() for p in net.collect_params().values()]


def _numpy(a) -> onp.ndarray:
    return a.asnumpy() if isinstance(a, mx.nd.NDArray) else onp.asarray(a)


# ---------------------------------------------------------------- the launcher

def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def role_env(role: str, num_workers: int, num_servers: int, port: int, host: str = HOST,
             node_host: str | None = None) -> dict[str, str]:
    """Environment variables that make a process ``role`` of the run scheduled at ``host:port``.

    ``node_host`` is the address this process listens on and announces: ``host``
    on one machine; its own machine's address when a run spans several.
    """
    if role not in ("scheduler", "server", "worker"):
        raise ValueError(f"role must be scheduler, server or worker, got {role!r}")
    return {"DMLC_ROLE": role,
            "DMLC_PS_ROOT_URI": host,  # the scheduler's address, which everyone dials
            "DMLC_PS_ROOT_PORT": str(port),
            "DMLC_NODE_HOST": node_host or host,
            "DMLC_NUM_WORKER": str(num_workers),
            "DMLC_NUM_SERVER": str(num_servers),
            # One core per process: the workers are the parallelism
            "OMP_NUM_THREADS": "1"}


def launch(fn, num_workers: int, *, num_servers: int = 1, timeout: float | None = None,
           echo: bool = True, **kwargs) -> list:
    """Run ``fn(**kwargs)`` in each of ``num_workers`` ``dist_sync`` workers; their results.

    Starts a scheduler, ``num_servers`` servers and the workers on 127.0.0.1,
    and returns the workers' return values in the order of their ranks. ``fn``,
    ``kwargs`` and the results travel by pickle. ``echo`` prints the workers'
    output as it comes. Every role is stopped on return, on an error and on
    Ctrl-C. A role that dies, or a run longer than ``timeout`` seconds, raises
    ``WorkerError`` at once, quoting the role's error output.
    """
    if num_workers < 1 or num_servers < 1:
        raise ValueError(f"need at least one worker and one server, got {num_workers} and "
                         f"{num_servers}")
    with tempfile.TemporaryDirectory(prefix="d2lbn-dist-") as folder:
        run = Path(folder)
        # cloudpickle: fn may be a notebook's own function, which workers cannot import
        (run / "job.pkl").write_bytes(cloudpickle.dumps((fn, kwargs)))
        port = free_port()
        env = dict(os.environ)
        # Workers import fn by name: let them find what this process finds
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        roles = [("scheduler", [sys.executable, "-c", "import mxnet"])]
        roles += [(f"server {i}", [sys.executable, "-c", "import mxnet"])
                  for i in range(num_servers)]
        roles += [(f"worker {i}", [sys.executable, "-m", "d2lbn.scale.dist", str(run)])
                  for i in range(num_workers)]
        procs = {}
        try:
            for name, command in roles:
                role_vars = role_env(name.split()[0], num_workers, num_servers, port)
                procs[name] = _start(command, {**env, **role_vars}, run / name.replace(" ", "-"))
            _watch(procs, run, num_workers, timeout, echo)
            results = [pickle.loads((run / f"result-{rank}.pkl").read_bytes())
                       for rank in range(num_workers)]
            # Done: the roles shut down together, which takes them a moment
            _stop(procs.values(), grace=STOP_S)
            return results
        finally:
            _stop(procs.values())


def _start(command, env, log: Path) -> subprocess.Popen:
    """Start one role, its output into ``log``.out and .err, in a session of its own."""
    # A session of its own: Ctrl-C in a terminal reaches only the launcher, which
    # then stops the roles
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True, preexec_fn=_in_child)


def _in_child() -> None:
    """Set up a role's process between fork and exec."""
    # Ignored until a worker registers its stack dump: an ignored signal stays
    # ignored across exec, and SIGUSR1's default would kill a worker still starting
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        # Should the launcher itself be killed, Linux kills the roles
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _watch(procs: dict, run: Path, num_workers: int, timeout: float | None, echo: bool):
    """Wait until every worker has returned a result; ``WorkerError`` as soon as a role fails."""
    start = time.monotonic()
    echoed = {name: 0 for name in procs if name.startswith("worker")}
    while True:
        if echo:
            for name in echoed:
                echoed[name] = _echo(run / (name.replace(" ", "-") + ".out"), echoed[name])
        codes = {name: proc.poll() for name, proc in procs.items()}
        # Counted after polling: a worker writes its result before it exits
        done = sum((run / f"result-{rank}.pkl").exists() for rank in range(num_workers))
        if done == num_workers:
            return
        for name, code in codes.items():
            # A worker may exit once its result is written; no other role may exit early
            if code is not None and not (name.startswith("worker") and code == 0):
                raise WorkerError(f"{name} (pid {procs[name].pid}) exited with code {code} "
                                  f"before the run ended:\n{_tail(run, name)}")
        finished = [name for name in echoed if codes[name] == 0]
        if len(finished) > done:
            raise WorkerError(f"{', '.join(finished)} exited without error, but only {done} "
                              f"left a result:\n{_tail(run, finished[-1])}")
        if timeout is not None and time.monotonic() - start > timeout:
            _dump_stacks([procs[name] for name in echoed])
            said = "\n".join(f"{name} said:\n{_tail(run, name)}" for name in echoed)
            raise WorkerError(f"the run took more than {timeout} s; stopped it. {said}")
        time.sleep(POLL_S)


def _dump_stacks(workers) -> None:
    """Have the workers write where each thread is to their error output (for a hung run)."""
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)
    time.sleep(STACKS_S)


def _echo(path: Path, offset: int) -> int:
    """Print what ``path`` gained since ``offset`` (whole lines only); the new offset."""
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read()
    end = text.rfind(b"\n") + 1
    if end:
        print(text[:end].decode(errors="replace"), end="", flush=True)
    return offset + end


def _tail(run: Path, name: str) -> str:
    stem = run / name.replace(" ", "-")
    text = ""
    for suffix in (".out", ".err"):
        text += stem.with_suffix(suffix).read_bytes().decode(errors="replace")
    return text[-TAIL:].strip() or "(no output)"


def _stop(procs, grace: float = 0.0) -> None:
    """Let the roles exit for ``grace`` s; SIGTERM the rest, and SIGKILL them ``STOP_S`` s later."""
    procs = list(procs)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.terminate()
    deadline = time.monotonic() + STOP_S
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _worker_main(run: Path) -> int:
    """A worker process: run the job in ``run``, write the result under this worker's rank."""
    # The launcher asks for the stacks of a run that outlasts its timeout
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        fn, kwargs = pickle.loads((run / "job.pkl").read_bytes())
        rank = kvstore().rank
        # The scheduler numbers the workers, not the launcher: say which one this is
        print(f"(rank {rank} of {kvstore().num_workers})", file=sys.stderr, flush=True)
        result = fn(**kwargs)
        tmp = run / f".result-{rank}.pkl"
        tmp.write_bytes(pickle.dumps(result))
        tmp.rename(run / f"result-{rank}.pkl")  # whole or not at all, for the launcher
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        # At once: a normal exit would wait in MXNet's clean-up for the other workers
        os._exit(1)
    return 0


if __name__ == "__main__":
    # Through the imported module, not this __main__ copy of it: the job's
    # functions live there and must share its one kvstore
    from d2lbn.scale import dist

    sys.exit(dist._worker_main(Path(sys.argv[1])))
