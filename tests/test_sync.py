"""Synchronized BN on two CPU contexts equals single-device BN on the concatenated batch."""

import mxnet as mx
import numpy as onp
import pytest
from helpers import assert_close_in, check_refused, numpy_batch_norm, parameter_bytes
from mxnet import autograd, gluon, np
from mxnet.gluon import nn

import d2lbn
from d2lbn import models
from d2lbn.scale.sync import (
    PerShard,
    ShardedSequential,
    SyncBatchNorm,
    all_reduce,
    gather,
    per_device_batch_norm,
    sharded,
    split_and_load,
    sync_batch_norm,
)

CTXS = [mx.cpu(0), mx.cpu(1)]
TOL = dict(rtol=1e-5, atol=1e-5)


def sorted_batch(shape, seed=0):
    """A batch whose examples grow along axis 0, so that shards have unlike statistics."""
    X = onp.random.default_rng(seed).normal(2, 3, size=shape)
    X += 4 * onp.linspace(-1, 1, shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
    return X.astype("float32")


def make_pair(shape, sync=True):
    """Our BN on CTXS and Gluon's on cpu(0), with the same (non-trivial) gamma and beta."""
    C = shape[1]
    ours, ref = SyncBatchNorm(C, len(shape), sync=sync), nn.BatchNorm(in_channels=C)
    ours.initialize(ctx=CTXS)
    ref.initialize(ctx=CTXS[0])
    gamma, beta = onp.linspace(0.5, 2, C), onp.linspace(-1, 1, C)
    ours.gamma.set_data(np.array(gamma.reshape(ours.gamma.shape)))
    ours.beta.set_data(np.array(beta.reshape(ours.beta.shape)))
    ref.gamma.set_data(np.array(gamma))
    ref.beta.set_data(np.array(beta))
    return ours, ref, gamma.reshape(ours.gamma.shape), beta.reshape(ours.beta.shape)


def shard_step(bn, X, head, sizes):
    """One recorded step of ``bn`` on shards of ``X``: ``(Y, dX)`` gathered on cpu(0)."""
    Xs, heads = split_and_load(np.array(X), CTXS, sizes), split_and_load(np.array(head), CTXS,
                                                                         sizes)
    for Xk in Xs:
        Xk.attach_grad()
    with autograd.record():
        Ys = bn(Xs)
    autograd.backward(Ys, heads)
    assert [Y.ctx for Y in Ys] == [Xk.grad.ctx for Xk in Xs] == CTXS
    return gather(Ys, CTXS[0]).asnumpy(), gather([Xk.grad for Xk in Xs], CTXS[0]).asnumpy()


def whole_step(bn, X, head):
    """One recorded step of Gluon's BN on the whole batch on cpu(0): ``(Y, dX)``."""
    X = np.array(X)
    X.attach_grad()
    with autograd.record():
        Y = bn(X)
    Y.backward(np.array(head))
    return Y.asnumpy(), X.grad.asnumpy()


def summed_grad(param):
    """A parameter's gradient summed over the contexts, as a Trainer would all-reduce it."""
    return sum(g.asnumpy() for g in param.list_grad()).ravel()


@pytest.mark.parametrize("sizes", [[4, 4], [5, 3]], ids=str)
@pytest.mark.parametrize("shape", [(8, 5), (8, 3, 4, 4)], ids=str)
def test_sync_equals_single_device_bn_on_whole_batch(shape, sizes):
    ours, ref, gamma, beta = make_pair(shape)
    moving_mean, moving_var = onp.zeros(gamma.shape), onp.ones(gamma.shape)
    for i in range(2):
        X, head = sorted_batch(shape, i), sorted_batch(shape, 10 + i)
        (Y, dX), (Y_ref, dX_ref) = shard_step(ours, X, head, sizes), whole_step(ref, X, head)
        onp.testing.assert_allclose(Y, Y_ref, **TOL)
        onp.testing.assert_allclose(dX, dX_ref, **TOL)
        onp.testing.assert_allclose(summed_grad(ours.gamma), ref.gamma.grad().asnumpy(), **TOL)
        onp.testing.assert_allclose(summed_grad(ours.beta), ref.beta.grad().asnumpy(), **TOL)
        # And the float64 reference, which owes nothing to MXNet
        Y64, dX64, dgamma64, dbeta64, moving_mean, moving_var = numpy_batch_norm(
            X, gamma, beta, moving_mean, moving_var, head)
        for got, want in [(Y, Y64), (dX, dX64), (summed_grad(ours.gamma), dgamma64.ravel()),
                          (summed_grad(ours.beta), dbeta64.ravel())]:
            onp.testing.assert_allclose(got, want, **TOL)
    for ctx in CTXS:
        for name, want in [("mean", moving_mean.ravel()), ("var", moving_var.ravel())]:
            onp.testing.assert_allclose(getattr(ours, "moving_" + name).data(ctx).asnumpy().ravel(),
                                        getattr(ref, "running_" + name).data().asnumpy(), **TOL)
            onp.testing.assert_allclose(getattr(ours, "moving_" + name).data(ctx).asnumpy().ravel(),
                                        want, **TOL)
    # Prediction: each device uses its moving statistics, which match the reference
    X = sorted_batch(shape, 99)
    Y = gather(ours(split_and_load(np.array(X), CTXS, sizes)), CTXS[0])
    onp.testing.assert_allclose(Y.asnumpy(), ref(np.array(X)).asnumpy(), **TOL)


def test_sync_moving_statistics_agree_bit_for_bit():
    bn, _, _, _ = make_pair((6, 4))
    X = sorted_batch((6, 4))
    shard_step(bn, X, X, [2, 4])
    for p in (bn.moving_mean, bn.moving_var):
        onp.testing.assert_array_equal(p.data(CTXS[0]).asnumpy(), p.data(CTXS[1]).asnumpy())


@pytest.mark.parametrize("shape", [(8, 5), (8, 3, 4, 4)], ids=str)
def test_per_device_bn_differs_and_normalises_each_shard_alone(shape):
    ours, ref, gamma, beta = make_pair(shape, sync=False)
    X, head = sorted_batch(shape), sorted_batch(shape, 10)
    (Y, _), (Y_ref, _) = shard_step(ours, X, head, [4, 4]), whole_step(ref, X, head)
    assert onp.abs(Y - Y_ref).max() > 0.5  # the sorted shards have unlike statistics
    for half in (slice(0, 4), slice(4, 8)):
        want = numpy_batch_norm(X[half], gamma, beta, 0 * gamma, 1 + 0 * gamma, head[half])[0]
        onp.testing.assert_allclose(Y[half], want, **TOL)
    means = [ours.moving_mean.data(ctx).asnumpy() for ctx in CTXS]
    assert onp.abs(means[0] - means[1]).min() > 0.1
    onp.testing.assert_allclose((means[0] + means[1]).ravel() / 2,
                                ref.running_mean.data().asnumpy(), **TOL)


def test_all_reduce_sums_on_every_device_and_backpropagates_across():
    a = np.array([1.0, 2.0], ctx=CTXS[0])
    b = np.array([10.0, 20.0], ctx=CTXS[1])
    for x in (a, b):
        x.attach_grad()
    with autograd.record():
        sums = all_reduce([a, b])
        loss = [(s * w).sum() for s, w in zip(sums, (2.0, 3.0))]
    autograd.backward(loss)
    assert [s.ctx for s in sums] == CTXS and (a.grad.ctx, b.grad.ctx) == tuple(CTXS)
    for s in sums:
        onp.testing.assert_array_equal(s.asnumpy(), [11, 22])
    onp.testing.assert_array_equal(a.grad.asnumpy(), [5, 5])
    onp.testing.assert_array_equal(b.grad.asnumpy(), [5, 5])


@pytest.mark.parametrize("training", [True, False])
def test_functions_on_one_shard_are_batch_norm(training):
    """One shard: both functions compute BN of it, by the float64 reference, in either mode."""
    X = sorted_batch((6, 3, 2, 2))
    gamma, beta = onp.full((1, 3, 1, 1), 1.5), onp.full((1, 3, 1, 1), 0.5)
    mean, var = onp.full((1, 3, 1, 1), 0.2), onp.full((1, 3, 1, 1), 2.0)
    head = sorted_batch((6, 3, 2, 2), 1)
    Y, dX, dgamma, dbeta, new_mean, new_var = numpy_batch_norm(X, gamma, beta, mean, var, head,
                                                               training)
    for fn in (sync_batch_norm, per_device_batch_norm):
        arrays = [np.array(a, dtype="float32") for a in (X, gamma, beta)]
        for a in arrays:
            a.attach_grad()
        with autograd.record(train_mode=training):
            got = fn(*[[a] for a in arrays], [np.array(mean, dtype="float32")],
                     [np.array(var, dtype="float32")], eps=1e-5, momentum=0.9)
        got[0][0].backward(np.array(head))
        assert [len(g) for g in got] == [1, 1, 1]
        for name, g, w in zip(["Y", "moving_mean", "moving_var"], got,
                              [Y, new_mean, new_var]):
            onp.testing.assert_allclose(g[0].asnumpy(), w, **TOL, err_msg=(fn.__name__, name))
        for name, a, w in zip(["dX", "dgamma", "dbeta"], arrays, [dX, dgamma, dbeta]):
            onp.testing.assert_allclose(a.grad.asnumpy(), w, **TOL, err_msg=(fn.__name__, name))


def test_trainer_on_a_net_of_shards_matches_one_device():
    """Dense -> BN trained with SGD on two contexts equals the same net on one."""
    shards = nn.Sequential()
    shards.add(PerShard(nn.Dense(4, in_units=5)), SyncBatchNorm(4, 2))
    whole = nn.Sequential()
    whole.add(nn.Dense(4, in_units=5), nn.BatchNorm(in_channels=4))
    shards.initialize(mx.init.Xavier(), ctx=CTXS)
    whole.initialize(ctx=CTXS[0])
    whole[0].weight.set_data(shards[0].block.weight.data(CTXS[0]))
    trainers = [gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5})
                for net in (shards, whole)]
    for i in range(3):
        X, head = sorted_batch((8, 5), i), sorted_batch((8, 4), 10 + i)
        shard_step(shards, X, head, [3, 5])
        whole_step(whole, X, head)
        for trainer in trainers:
            trainer.step(8)
    for ctx in CTXS:
        onp.testing.assert_allclose(shards[0].block.weight.data(ctx).asnumpy(),
                                    whole[0].weight.data().asnumpy(), **TOL)
        onp.testing.assert_allclose(shards[1].gamma.data(ctx).asnumpy().ravel(),
                                    whole[1].gamma.data().asnumpy(), **TOL)
        onp.testing.assert_allclose(shards[1].moving_var.data(ctx).asnumpy().ravel(),
                                    whole[1].running_var.data().asnumpy(), **TOL)


def test_split_and_load():
    X = np.arange(7 * 2).reshape(7, 2)
    assert [x.shape[0] for x in split_and_load(X, CTXS)] == [4, 3]
    shards = split_and_load(X, CTXS, [2, 5])
    assert [x.shape[0] for x in shards] == [2, 5] and [x.ctx for x in shards] == CTXS
    onp.testing.assert_array_equal(gather(shards).asnumpy(), X.asnumpy())
    for sizes in ([3, 3], [7, 0], [7]):
        with pytest.raises(ValueError, match="cannot split"):
            split_and_load(X, CTXS, sizes)


def test_bad_input():
    one = [np.ones((1, 3, 1, 1))] * 2
    with pytest.raises(ValueError, match="empty list"):
        sync_batch_norm([], [], [], [], [], eps=1e-5, momentum=0.9)
    shards = [np.ones((2, 3, 4, 4), ctx=CTXS[0]), np.ones((2, 5, 4, 4), ctx=CTXS[1])]
    with pytest.raises(ValueError, match="channels"):
        sync_batch_norm(shards, one, one, one, one, eps=1e-5, momentum=0.9)
    with pytest.raises(ValueError, match="axes"):
        per_device_batch_norm([shards[0], np.ones((2, 3))], one, one, one, one, 1e-5, 0.9)
    with pytest.raises(ValueError, match="empty"):
        sync_batch_norm([shards[0], np.ones((0, 3, 4, 4))], one, one, one, one, 1e-5, 0.9)
    with pytest.raises(ValueError, match="2 shards but 1"):
        sync_batch_norm(shards[:1] * 2, one[:1], one, one, one, eps=1e-5, momentum=0.9)
    bn = SyncBatchNorm(3, 4)
    bn.initialize(ctx=CTXS)
    with pytest.raises(ValueError, match=r"3 channels.*got 5"):
        bn([np.ones((2, 5, 4, 4), ctx=ctx) for ctx in CTXS])
    with pytest.raises(ValueError, match="one shard per context"):
        bn([shards[0], shards[0]])
    with pytest.raises(ValueError, match="empty list"):
        bn([])


def test_contrib_sync_batch_norm_refuses_numpy_arrays():
    """Why this module exists: MXNet's own SyncBatchNorm is a legacy-only operator."""
    # num_devices=1: should a later MXNet accept the arrays, no barrier can hang the test
    bn = gluon.contrib.nn.SyncBatchNorm(in_channels=3, num_devices=1)
    bn.initialize()
    with pytest.raises(TypeError, match="legacy"):
        bn(np.ones((2, 3, 4, 4)))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("fn", [sync_batch_norm, per_device_batch_norm],
                         ids=["sync", "per-device"])
def test_each_dtype_is_honoured_or_refused(fn, dtype):
    shape = (8, 3, 2, 2)
    X = sorted_batch(shape).astype(dtype)
    gamma, beta = onp.linspace(0.5, 2, 3).reshape(1, 3, 1, 1), onp.zeros((1, 3, 1, 1))
    per_shard_numpy = (gamma, beta, onp.zeros_like(gamma), onp.ones_like(gamma))
    per_shard = [[np.array(a, dtype=dtype, ctx=ctx) for ctx in CTXS] for a in per_shard_numpy]
    Xs = split_and_load(np.array(X), CTXS)
    if fn is sync_batch_norm and dtype == "float16":
        # Its sums would overflow float16 on a real batch: refused
        with pytest.raises(ValueError, match="float32 or float64, not float16"):
            with autograd.train_mode():
                fn(Xs, *per_shard, eps=1e-5, momentum=0.9)
        return
    with autograd.train_mode():
        Ys, means, variances = fn(Xs, *per_shard, eps=1e-5, momentum=0.9)
    # Synchronized: the whole batch's statistics; per device: each half's
    halves = [X] * 2 if fn is sync_batch_norm else [X[:4], X[4:]]
    want = [numpy_batch_norm(half, *per_shard_numpy, onp.zeros(half.shape)) for half in halves]
    Y = onp.concatenate([w[0] for w in want]) if fn is per_device_batch_norm else want[0][0]
    assert_close_in(dtype, [gather(Ys, CTXS[0])] + means + variances,
                    [Y] + [w[4] for w in want] + [w[5] for w in want])


def test_shards_are_checked_up_front():
    one = [np.ones((1, 3, 1, 1), ctx=ctx) for ctx in CTXS]
    shards = [np.ones((2, 3, 4, 4), ctx=ctx) for ctx in CTXS]
    wrong = [one[0], np.ones((1, 5, 1, 1), ctx=CTXS[1])]
    with pytest.raises(ValueError, match=r"gamma must have shape \(1, 3, 1, 1\)"):
        sync_batch_norm(shards, wrong, one, one, one, eps=1e-5, momentum=0.9)
    with pytest.raises(ValueError, match="gamma is float32 but the input is float64"):
        sync_batch_norm([X.astype("float64") for X in shards], one, one, one, one, 1e-5, 0.9)
    with pytest.raises(ValueError, match="empty input"):
        per_device_batch_norm([shards[0], np.ones((2, 3, 0, 4), ctx=CTXS[1])], one, one, one,
                              one, 1e-5, 0.9)


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("shapes, dtype, match", [
    ([(2, 3, 4, 4), (2, 3, 0, 4)], "float32", "empty input"),
    ([(2, 3, 4, 4), (2, 3, 4, 4)], "float64", "parameters are float32 but the input is float64"),
    ([(2, 5, 4, 4), (2, 5, 4, 4)], "float32", r"3 channels.*got 5"),
    ([(2, 3, 4, 4), (2, 3, 4, 4)], "float16", "float32 but the input is float16"),
], ids=["no positions", "float64", "channels", "float16"])
@pytest.mark.parametrize("sync", [True, False], ids=["sync", "per-device"])
def test_bad_input_leaves_the_layer_as_it_was(sync, shapes, dtype, match, training):
    bn = SyncBatchNorm(3, 4, sync=sync)
    bn.initialize(ctx=CTXS)
    good = [np.array(sorted_batch((2, 3, 4, 4), i), ctx=ctx) for i, ctx in enumerate(CTXS)]
    with autograd.record():
        bn(good)
    bad = [np.ones(shape, dtype=dtype, ctx=ctx) for shape, ctx in zip(shapes, CTXS)]
    # The statistics on both contexts, bit for bit
    check_refused(bn, bad, match, training=training)
    before = parameter_bytes(bn)
    with autograd.record():
        bn([X + 1 for X in good])
    assert parameter_bytes(bn) != before


def test_reduce_names_what_it_sums_and_may_span_more_shards():
    """The hook d2lbn.scale.dist fills: counts, sums and squares, each under the layer's name."""
    X = sorted_batch((8, 3, 2, 2))
    head = sorted_batch((8, 3, 2, 2), 10)
    tags = []

    def twice(arrays, tag):
        # As if a second process held the same shards: every total doubles,
        # counts with them, so the statistics (and the outputs) stay the same;
        # were the count left out, the means would double
        tags.append(tag)
        return [2 * s for s in all_reduce(arrays)]

    plain, doubled = SyncBatchNorm(3, 4), SyncBatchNorm(3, 4, reduce=twice)
    for bn in (plain, doubled):
        bn.initialize(ctx=CTXS)
    (Y, dX), (Y2, dX2) = (shard_step(bn, X, head, [5, 3]) for bn in (plain, doubled))
    assert tags == [f"{doubled.name}/{t}" for t in ("count", "sum", "square")]
    onp.testing.assert_allclose(Y2, Y, **TOL)
    onp.testing.assert_allclose(dX2, dX, **TOL)
    doubled(split_and_load(np.array(X), CTXS))  # prediction: no reduction
    assert len(tags) == 3


def test_sharded_swaps_bn_for_sync_bn_and_shares_the_other_layers():
    net = models.lenet("scratch")
    shards = sharded(net, sync=False)
    assert isinstance(shards, ShardedSequential) and len(shards) == len(net)
    for old, new in zip(net, shards):
        if isinstance(old, d2lbn.BatchNorm):
            assert isinstance(new, SyncBatchNorm) and not new.sync
            assert (new.num_features, new.num_dims, new.eps, new.momentum) == (
                old.num_features, old.num_dims, old.eps, old.momentum)
        else:
            assert isinstance(new, PerShard) and new.block is old
    shards.initialize(ctx=CTXS)
    Ys = shards(split_and_load(np.array(sorted_batch((6, 1, 28, 28))), CTXS))
    assert [Y.shape for Y in Ys] == [(3, 10), (3, 10)]
    with pytest.raises(ValueError, match="Gluon"):
        sharded(models.lenet("gluon"))
    with pytest.raises(ValueError, match="normalises fully"):
        sharded(models.lenet(lambda c, d: d2lbn.BatchNorm(c, d, normalize="mean")))


def test_sync_layer_refuses_float16_per_device_takes_it():
    for sync in (True, False):
        bn = SyncBatchNorm(3, 4, sync=sync)
        bn.initialize(ctx=CTXS)
        bn.cast("float16")
        Xs = [np.array(sorted_batch((2, 3, 4, 4), i), dtype="float16", ctx=ctx)
              for i, ctx in enumerate(CTXS)]
        if sync:
            check_refused(bn, Xs, "float32 or float64, not float16")
            continue
        with autograd.record():
            Ys = bn(Xs)
        for X, Y in zip(Xs, Ys):
            one, zero = onp.ones((1, 3, 1, 1)), onp.zeros((1, 3, 1, 1))
            want = numpy_batch_norm(X.asnumpy(), one, zero, zero, one, onp.zeros(X.shape))[0]
            assert_close_in("float16", [Y], [want])
