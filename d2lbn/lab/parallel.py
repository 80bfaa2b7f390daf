"""Several training runs at once, in worker processes, within one budget of cores.

One MXNet process uses about one core, so runs scale with processes, not threads.
The budget is a token pipe in the spirit of make's jobserver: ``python -m d2lbn run
--jobs N`` creates a FIFO holding N tokens; every notebook kernel and every
worker computing for it holds one, so notebooks x workers never exceed N. A
process that waits for its workers lends its token meanwhile. Without a
jobserver (a notebook opened by hand), ``D2LBN_JOBS`` or the number of cores
bounds the workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import multiprocessing as mp
import os
import queue
import signal
import sys
import traceback
from typing import Callable, Dict, Tuple

from .. import train

JOBSERVER_ENV = "D2LBN_JOBSERVER"
JOBS_ENV = "D2LBN_JOBS"
# name -> (a function building a fresh net, learning rate); typing's generics, since
# a subscripted dict outside an annotation needs Python 3.9
Settings = Dict[str, Tuple[Callable[[], object], float]]


def jobs() -> int:
    """The budget of processes: ``$D2LBN_JOBS``, else the number of cores."""
    value = os.environ.get(JOBS_ENV, "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{JOBS_ENV} must be a positive integer, got {value!r}")
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class JobServer:
    """A FIFO of tokens shared by the processes of one run; one token per computing process."""

    def __init__(self, path: str, blocking: bool = True):
        self.path = path
        flags = os.O_RDWR | (0 if blocking else os.O_NONBLOCK)  # RDWR: reads never see EOF
        self.fd = os.open(path, flags)

    @classmethod
    def create(cls, path: str, tokens: int) -> JobServer:
        """Make the FIFO at ``path`` holding ``tokens`` tokens (a non-blocking handle)."""
        os.mkfifo(path)
        server = cls(path, blocking=False)
        os.write(server.fd, b"+" * tokens)
        return server

    @classmethod
    def from_env(cls) -> JobServer | None:
        """The run's jobserver, if this process runs under one."""
        path = os.environ.get(JOBSERVER_ENV)
        return cls(path) if path and os.path.exists(path) else None

    def try_acquire(self) -> bool:
        """Take a token if one is free (non-blocking handles only)."""
        try:
            return len(os.read(self.fd, 1)) == 1
        except BlockingIOError:
            return False

    def acquire(self) -> None:
        """Take a token, waiting for one."""
        os.read(self.fd, 1)

    def release(self) -> None:
        """Give a token back."""
        os.write(self.fd, b"+")

    def close(self) -> None:
        os.close(self.fd)

    @contextlib.contextmanager
    def lent(self):
        """Give this process's token back while it only waits, then take one again."""
        self.release()
        try:
            yield
        finally:
            self.acquire()


def run_all(tasks: list[Callable[[], object]], max_workers: int | None = None,
            on_result: Callable[[int, object], None] | None = None) -> list:
    """Call every task (a function of no arguments), in worker processes; results in order.

    Tasks may be lambdas and closures over loaded data (a notebook's): cloudpickle
    sends them, all in one pickle so that shared data travels once per worker.
    Workers are started fresh (spawned), since a process forked from a Jupyter
    kernel shares the kernel's ZeroMQ state. Each task must be deterministic given
    its own seed; then the results equal calling the tasks one after another
    (tested). ``on_result(i, result)`` is called as each one arrives. With one
    worker, or one task, the tasks run in this process.
    """
    n = min(len(tasks), max_workers or jobs())
    if n <= 1:
        results = []
        for i, task in enumerate(tasks):
            results.append(task())
            if on_result:
                on_result(i, results[-1])
        return results
    import cloudpickle

    payload = cloudpickle.dumps(tasks)
    ctx = mp.get_context("spawn")
    todo, done = ctx.Queue(), ctx.Queue()
    for i in range(len(tasks)):
        todo.put(i)
    for _ in range(n):
        todo.put(None)
    server = JobServer.from_env()
    workers = [ctx.Process(target=_worker, args=(payload, todo, done), daemon=True)
               for _ in range(n)]
    results = [None] * len(tasks)
    try:
        with server.lent() if server else contextlib.nullcontext():
            with environ(OMP_NUM_THREADS="1"):  # one core per process
                for w in workers:
                    w.start()
            for _ in tasks:
                i, ok, value = _next_result(done, workers)
                if not ok:
                    raise RuntimeError(f"task {i} failed in a worker process:\n{value}")
                results[i] = value
                if on_result:
                    on_result(i, value)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
            w.join()
        if server:
            server.close()
    return results


def _next_result(done, workers):
    """The next (index, ok, value) from the workers; an error if one died without a word."""
    while True:
        try:
            return done.get(timeout=1.0)
        except queue.Empty:
            codes = [w.exitcode for w in workers]
            dead = [c for c in codes if c not in (None, 0)]
            if dead or None not in codes:
                raise RuntimeError(f"worker processes ended without their results (exit codes "
                                   f"{codes})") from None


@contextlib.contextmanager
def environ(**values):
    """Set environment variables (None: unset) for a ``with`` block; children inherit them."""
    saved = {k: os.environ.get(k) for k in values}
    _set(values)
    try:
        yield
    finally:
        _set(saved)


def _set(values: dict) -> None:
    for k, v in values.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _worker(payload, todo, done) -> None:
    import pickle

    # Ctrl-C goes to the parent, which ends its workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    tasks = pickle.loads(payload)
    server = JobServer.from_env()
    while (i := todo.get()) is not None:
        if server:
            server.acquire()
        try:
            done.put((i, True, tasks[i]()))
        except BaseException:
            done.put((i, False, traceback.format_exc()))
        finally:
            if server:
                server.release()
    done.close()
    done.join_thread()  # the results are written by a thread; wait for it


def _die_with_parent() -> None:
    # A kernel killed outright (Ctrl-C in the runner) must not leave workers computing
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def sweep(settings: Settings, train_iter, test_iter, num_epochs: int,
          seeds: tuple[int, ...] = (0, 1), device=None, hybridize: bool = True,
          measure: dict[str, Callable] | None = None,
          max_workers: int | None = None) -> dict[str, list[train.History]]:
    """Train every setting once per seed, in parallel; print one line per run; runs by name.

    ``measure`` maps names to functions of the trained net; their values go to
    each run's ``History.extra``. The runs are those of a sequential loop, seed
    by seed (tested); only the order of the printed lines depends on timing.
    """
    if not settings or not seeds:
        raise ValueError("sweep() needs at least one setting and one seed")
    keys = [(name, seed) for name in settings for seed in seeds]

    def task(name, seed):
        make_net, lr = settings[name]
        net = make_net()
        with contextlib.redirect_stdout(io.StringIO()):  # the report below speaks for it
            h = train.train(net, train_iter, test_iter, num_epochs, lr, device, seed, hybridize)
        h.extra = {key: fn(net) for key, fn in (measure or {}).items()}
        return h

    count = [0]

    def report(i, h):
        count[0] += 1
        print(run_line(count[0], len(keys), keys[i][0], h), flush=True)

    runs = run_all([lambda k=k: task(*k) for k in keys], max_workers, report)
    groups = {name: [] for name in settings}
    for (name, _), h in zip(keys, runs):
        groups[name].append(h)
    return groups


def run_line(i: int, n: int, name: str, h: train.History) -> str:
    """Run ``i`` of ``n`` as ``sweep`` prints it: ``[i/n] name, seed s: loss …, … (t s)``."""
    f = h.final()
    label = f"{name}, seed {h.seed}" if name else f"seed {h.seed}"
    return (f"[{i}/{n}] {label}: loss {f['loss']:.3f}, train acc {f['train_acc']:.3f}, "
            f"test acc {f['test_acc']:.3f} ({h.wall_s:.0f} s)")


def repeat(make_net: Callable[[], object], train_iter, test_iter, num_epochs: int, lr: float,
           seeds: tuple[int, ...], **kwargs) -> list[train.History]:
    """One setting trained once per seed, in parallel (``sweep`` with one setting)."""
    return sweep({"": (make_net, lr)}, train_iter, test_iter, num_epochs, seeds,
                 **kwargs)[""]
