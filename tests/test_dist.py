"""Data parallelism over processes: a dist_sync run on 127.0.0.1 against one process."""

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mxnet as mx
import numpy as onp
import pytest
from helpers import MOMENTUM, numpy_batch_norm, numpy_prediction, synthetic_iters
from mxnet import autograd, gluon, np

from d2lbn import models, train
from d2lbn.scale import dist, sync

# A guard against hangs, not a speed limit: a run takes 10 to 15 s on an idle 2-core
# machine, but starting four MXNet processes on a busy one can take minutes
TIMEOUT = 600
# One run at a time, on one xdist worker (make's --dist loadgroup): a run is four
# processes already, and each role of every run has the same ps-lite node id
pytestmark = pytest.mark.xdist_group("dist")
# float32 results of two computations that differ only in the order of some sums: each
# such sum is off by a few roundings (about 1e-7 relative), far inside this tolerance,
# and a comparison over several SGD steps is built so that those steps do not amplify it
TOL = dict(rtol=1e-4, atol=1e-5)


def children(pid="self"):
    """The live child processes of ``pid`` (Linux)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def global_batches(n=4, batch_size=16):
    """``n`` batches of the synthetic training set, in order (the same in every process)."""
    train_iter, _ = synthetic_iters()
    loader = gluon.data.DataLoader(train_iter._dataset, batch_size)
    return [(X.asnumpy(), y.asnumpy()) for X, y in list(loader)[:n]]


def one_process(norm, batches, devices=None, sync_bn=False, seed=0):
    """``train.sgd_steps`` of a fresh LeNet in this process: losses and parameters."""
    train.seed_all(seed)
    net = models.lenet(norm)
    if sync_bn:
        net = sync.sharded(net)
    net.initialize(mx.init.Xavier(), ctx=devices or mx.cpu())
    return train.sgd_steps(net, batches, 0.9, devices=devices), dist.parameters(net)


def test_the_wheel_has_the_dist_kvstore():
    assert mx.runtime.Features().is_enabled("DIST_KVSTORE")


# -- training: two workers against one process -------------------------------------------------

# Synchronized BN sums each worker's statistics and gradients where one process sums the
# whole batch's: the same values, summed in another order. At lr 0.9 the first two steps
# keep that rounding at its size (5e-7 on AVX-512, whose kernels sum in yet another
# order), but later steps amplify it (5e-4 after the 4th step, whose loss jumps from 2.2
# to 4.8): two steps. BN per worker is the same float32 arithmetic as one process on two
# devices (each shard alone, gradients summed over two), for as many steps as we like.
@pytest.mark.parametrize("sync_bn, num_steps", [(True, 2), (False, 4)],
                         ids=["synchronized", "per-worker"])
def test_two_workers_step_for_step_like_one_process(sync_bn, num_steps):
    """Synchronized BN: one device on whole batches; per-worker BN: two devices, BN per device."""
    batches = global_batches(num_steps)
    losses, params = dist.sgd_steps("scratch", batches, 0.9, num_workers=2, sync_bn=sync_bn,
                                    timeout=TIMEOUT)
    devices = None if sync_bn else [mx.cpu(0), mx.cpu(1)]
    want_losses, want_params = one_process("scratch", batches, devices)
    onp.testing.assert_allclose(losses, want_losses, **TOL)
    assert len(params) == len(want_params) == 26
    for got, want in zip(params, want_params):
        onp.testing.assert_allclose(got, want, **TOL)
    if sync_bn:
        # Not the same as BN per device: the comparison can fail
        other, _ = one_process("scratch", batches, [mx.cpu(0), mx.cpu(1)])
        assert onp.abs(onp.subtract(other, want_losses)).max() > 1e-3


def one_process_train(in_order, test_iter):
    """``train.train`` in this process on two devices, one per worker's shard: net and History."""
    # Worker r takes examples 100 r to 100 r + 99, 20 a step: device r gets the same batches
    shards = [dist.shard(in_order, r, 2) for r in range(2)]
    batches = [tuple(np.concatenate(parts) for parts in zip(*pair)) for pair in zip(*shards)]
    net = models.lenet("scratch")
    return net, train.train(net, batches, test_iter, 2, 0.9, [mx.cpu(0), mx.cpu(1)], seed=1)


def test_train_over_two_workers_equals_one_process_on_the_same_batches(tmp_path):
    """Epoch figures summed over workers, rank 0's test accuracy and saved parameters."""
    # BN per worker: the arithmetic of one process on two devices (see above), for 10 steps
    train_iter, test_iter = synthetic_iters(n=240)
    in_order = gluon.data.DataLoader(train_iter._dataset, 40)  # 200 examples, 5 steps
    history = dist.train("scratch", in_order, test_iter, 2, 0.9, num_workers=2,
                         seed=1, save=tmp_path / "lenet.params", timeout=TIMEOUT)
    net, want = one_process_train(in_order, test_iter)
    assert (history.device, history.batch_size, want.batch_size) == ("2 workers x cpu(0)", 40, 0)
    for key in ("loss", "train_acc", "test_acc"):
        onp.testing.assert_allclose(getattr(history, key), getattr(want, key), **TOL)
    assert history.train_acc[-1] > 0.5  # it learns
    saved = models.lenet("scratch")
    saved.load_parameters(str(tmp_path / "lenet.params"))
    for got, expected in zip(dist.parameters(saved), dist.parameters(net)):
        onp.testing.assert_allclose(got, expected, **TOL)


def _train_with_a_late_backward(**kwargs):
    """``dist._train_worker`` with the backward's sums over workers up to 50 ms late."""
    on_time = dist._SumOverWorkers._sum

    def late(self, key, a):
        # The backward runs on MXNet's own thread, the forward on the main one
        if threading.current_thread() is not threading.main_thread():
            time.sleep(random.uniform(0, 0.05))
        return on_time(self, key, a)

    dist._SumOverWorkers._sum = late
    return dist._train_worker(**kwargs)


def test_training_waits_for_a_late_backward():
    """Late sums overlapped the Trainer's kvstore calls and left a worker waiting for ever."""
    train_iter, test_iter = synthetic_iters(n=240)
    in_order = gluon.data.DataLoader(train_iter._dataset, 40)
    kwargs = dict(norm="scratch", sync_bn=True, train_iter=in_order, test_iter=test_iter,
                  num_epochs=3, lr=0.9, seed=1, hybridize=False, quiet=True, save=None)
    late = dist.launch(_train_with_a_late_backward, 2, timeout=TIMEOUT, **kwargs)[0]
    # Lateness changes when each sum is taken, not what it adds up: the run on time exactly
    on_time = dist.launch(dist._train_worker, 2, timeout=TIMEOUT, **kwargs)[0]
    for key in ("loss", "train_acc", "test_acc"):
        assert getattr(late, key) == getattr(on_time, key), key
    assert late.train_acc[-1] > 0.5  # it learns


# -- synchronized BN across processes against the whole batch ----------------------------------

SHAPES = {"conv": ((8, 3, 4, 4), [5, 3]), "dense": ((6, 5), [2, 4])}  # uneven shards


def bn_inputs(shape, step):
    """Batch, head gradient, gamma and beta of one step, the same in every process."""
    rng = onp.random.default_rng(step)
    C = shape[1]
    X = rng.normal(1.5, 2.0, size=shape) + 4 * onp.linspace(-1, 1, shape[0]).reshape(
        (-1,) + (1,) * (len(shape) - 1))  # shards with unlike statistics
    gamma, beta = (onp.linspace(0.5, 2, C), onp.linspace(-1, 1, C))
    param = (1, C) + (1,) * (len(shape) - 2)
    return (X.astype("float32"), rng.normal(size=shape).astype("float32"),
            gamma.reshape(param), beta.reshape(param))


def _bn_job(sync_bn):
    """Two training steps and a prediction of BN on this worker's shard of each batch."""
    rank = dist.kvstore().rank
    out = {}
    for name, (shape, sizes) in SHAPES.items():
        # The reference's momentum is the layer's default
        bn = sync.SyncBatchNorm(shape[1], len(shape), momentum=MOMENTUM, sync=sync_bn,
                                reduce=dist.all_reduce)
        bn.initialize(ctx=mx.cpu())
        mine = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
        steps = []
        for step in range(2):
            X, head, gamma, beta = bn_inputs(shape, step)
            bn.gamma.set_data(np.array(gamma))
            bn.beta.set_data(np.array(beta))
            X = np.array(X[mine])
            X.attach_grad()
            with autograd.record():
                Y = bn([X])[0]
            Y.backward(np.array(head[mine]))
            steps.append([a.asnumpy() for a in (Y, X.grad, bn.gamma.grad(), bn.beta.grad())])
        moving = [bn.moving_mean.data().asnumpy(), bn.moving_var.data().asnumpy()]
        predicted = bn([np.array(bn_inputs(shape, 9)[0][mine])])[0].asnumpy()
        out[name] = steps, moving, predicted
    return out


@pytest.mark.parametrize("name", list(SHAPES))
def test_sync_bn_across_workers_equals_bn_of_the_whole_batch(bn_runs, name):
    shape, _ = SHAPES[name]
    results = [r[name] for r in bn_runs["sync"]]
    mean = onp.zeros((1, shape[1]) + (1,) * (len(shape) - 2))
    var = onp.ones_like(mean)
    for step in range(2):
        X, head, gamma, beta = (a.astype("float64") for a in bn_inputs(shape, step))
        Y, dX, dgamma, dbeta, mean, var = numpy_batch_norm(X, gamma, beta, mean, var, head)
        got = [r[0][step] for r in results]
        onp.testing.assert_allclose(onp.concatenate([g[0] for g in got]), Y, **TOL)
        onp.testing.assert_allclose(onp.concatenate([g[1] for g in got]), dX, **TOL)
        # Each worker's gradients of gamma and beta: their sum is the whole batch's
        onp.testing.assert_allclose(sum(g[2] for g in got), dgamma, **TOL)
        onp.testing.assert_allclose(sum(g[3] for g in got), dbeta, **TOL)
    for r in results:
        onp.testing.assert_allclose(r[1][0], mean, **TOL)
        onp.testing.assert_allclose(r[1][1], var, **TOL)
    # Prediction: the moving statistics, the same on both workers
    X = bn_inputs(shape, 9)[0].astype("float64")
    gamma, beta = bn_inputs(shape, 1)[2:]
    want = numpy_prediction(X, gamma, beta, mean, var)
    onp.testing.assert_allclose(onp.concatenate([r[2] for r in results]), want, **TOL)


@pytest.mark.parametrize("name", list(SHAPES))
def test_per_worker_bn_normalises_each_shard_alone(bn_runs, name):
    shape, sizes = SHAPES[name]
    X, head, gamma, beta = (a.astype("float64") for a in bn_inputs(shape, 0))
    ones = onp.ones_like(gamma)
    start = 0
    for r, size in zip(bn_runs["per-worker"], sizes):
        part = slice(start, start + size)
        want = numpy_batch_norm(X[part], gamma, beta, 0 * ones, ones, head[part])
        onp.testing.assert_allclose(r[name][0][0][0], want[0], **TOL)
        start += size
    whole = numpy_batch_norm(X, gamma, beta, 0 * ones, ones, head)[0]
    got = onp.concatenate([r[name][0][0][0] for r in bn_runs["per-worker"]])
    assert onp.abs(got - whole).max() > 0.5


@pytest.fixture(scope="module")
def bn_runs():
    """Both runs of ``_bn_job``, once for the tests that read them."""
    return {name: dist.launch(_bn_job, 2, timeout=TIMEOUT, sync_bn=sync_bn)
            for name, sync_bn in (("sync", True), ("per-worker", False))}


# -- the launcher --------------------------------------------------------------------------------

def _early_exit_job(how):
    """Rank 1 leaves after one reduction; rank 0 waits for it in the next one."""
    kv = dist.kvstore()
    dist.all_reduce([np.ones(2)], "first")
    if kv.rank == 1:
        if how == "raise":
            raise RuntimeError("worker 1 gives up")
        os._exit(0)  # quietly, without a result
    dist.all_reduce([np.ones(2)], "second")  # never completes
    return "unreachable"


@pytest.mark.parametrize("how, message", [("raise", r"exited with code 1.*worker 1 gives up"),
                                          ("exit", "exited without error, but only 0 left")],
                         ids=["raises", "exits quietly"])
def test_a_worker_that_dies_fails_the_run_at_once(how, message):
    # The message is the watch's, not the timeout's; the others were stopped and reaped
    with pytest.raises(dist.WorkerError, match=f"(?s){message}"):
        dist.launch(_early_exit_job, 2, timeout=TIMEOUT, how=how)
    assert children() == []


def _sleep_job():
    print(f"worker {dist.kvstore().rank} ready", flush=True)
    time.sleep(600)


def test_a_run_over_its_timeout_stops_and_quotes_every_worker():
    # Each worker's stack shows where it waited (45 s: time to start on a busy machine)
    with pytest.raises(dist.WorkerError, match="(?s)took more than 45 s.*worker 0 said:.*"
                                               "in _sleep_job.*worker 1 said:.*in _sleep_job"):
        dist.launch(_sleep_job, 2, timeout=45)
    assert children() == []


def test_ctrl_c_stops_every_role():
    # a shell's background job starts with SIGINT ignored, which Python then keeps
    code = ("import signal, test_dist\nfrom d2lbn.scale import dist\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "dist.launch(test_dist._sleep_job, 2)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    launcher = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(TIMEOUT, launcher.kill)  # should the workers never get ready
    guard.start()
    try:
        ready = [launcher.stdout.readline() for _ in range(2)]
        assert sorted(ready) == ["worker 0 ready\n", "worker 1 ready\n"]
        roles = children(launcher.pid)
        assert len(roles) == 4  # scheduler, server, two workers
        launcher.send_signal(signal.SIGINT)
        _, err = launcher.communicate(timeout=TIMEOUT)  # bounds a hang; load slows it
    finally:
        guard.cancel()
        launcher.kill()
    assert launcher.returncode != 0 and "KeyboardInterrupt" in err
    for pid in roles:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_role_env_and_free_port():
    env = dist.role_env("server", 3, 1, 9000)
    assert env == {"DMLC_ROLE": "server", "DMLC_PS_ROOT_URI": "127.0.0.1",
                   "DMLC_PS_ROOT_PORT": "9000", "DMLC_NODE_HOST": "127.0.0.1",
                   "DMLC_NUM_WORKER": "3", "DMLC_NUM_SERVER": "1", "OMP_NUM_THREADS": "1"}
    across = dist.role_env("worker", 2, 1, 9000, host="10.0.0.1", node_host="10.0.0.2")
    assert (across["DMLC_PS_ROOT_URI"], across["DMLC_NODE_HOST"]) == ("10.0.0.1", "10.0.0.2")
    with pytest.raises(ValueError, match="role"):
        dist.role_env("chief", 1, 1, 9000)
    port = dist.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free indeed
    with pytest.raises(ValueError, match="at least one worker"):
        dist.launch(_sleep_job, 0)


def test_kvstore_outside_a_worker_says_so():
    with pytest.raises(RuntimeError, match="dist.launch"):
        dist.kvstore()


# -- each worker's share of the data --------------------------------------------------------------

@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_are_equal_disjoint_slices_in_smaller_batches(shuffle):
    data = gluon.data.ArrayDataset(onp.arange(11, dtype="float32"), onp.arange(11))
    loader = gluon.data.DataLoader(data, 4, shuffle=shuffle)
    seen = []
    for rank in range(2):
        batches = [X.asnumpy() for X, _ in dist.shard(loader, rank, 2)]
        assert [len(b) for b in batches] == [2, 2, 1]  # 5 examples each: the 11th is left out
        seen.append(list(onp.concatenate(batches)))
        assert sorted(seen[-1]) == list(range(5 * rank, 5 * rank + 5))
    assert any(s != sorted(s) for s in seen) == shuffle
    with pytest.raises(ValueError, match="does not split evenly"):
        dist.shard(loader, 0, 3)
    with pytest.raises(ValueError, match="rank"):
        dist.shard(loader, 2, 2)
