"""The BatchNorm Blocks: bookkeeping, hybridization, persistence, devices, bad input."""

import warnings

import mxnet as mx
import numpy as onp
import pytest
from helpers import (
    assert_close_in,
    batch,
    check_hybridized_equals_imperative,
    check_refused,
    float64,
    numpy_batch_norm,
    numpy_prediction,
    parameter_bytes,
    step,
    train_steps,
)
from mxnet import autograd, np
from mxnet.gluon import nn

import d2lbn
from d2lbn import models
from d2lbn.fast import FastBatchNorm
from d2lbn.norms.whiten import PITNorm, Whitening


def test_initial_state():
    bn = d2lbn.BatchNorm(3, num_dims=4)
    bn.initialize()
    for p, value in [(bn.gamma, 1), (bn.beta, 0), (bn.moving_mean, 0), (bn.moving_var, 1)]:
        assert p.shape == (1, 3, 1, 1)
        onp.testing.assert_array_equal(p.data().asnumpy(), value)
    assert bn.moving_mean.grad_req == "null" and bn.gamma.grad_req == "write"
    assert (bn.eps, bn.momentum) == (1e-5, 0.9)


@pytest.mark.parametrize("cls", [d2lbn.BatchNorm, FastBatchNorm])
@pytest.mark.parametrize("shape", [(8, 5), (6, 4, 7), (4, 3, 5, 6), (3, 2, 3, 4, 5)], ids=str)
def test_block_matches_gluon_batchnorm(shape, cls):
    ours, ref = cls(shape[1], len(shape)), nn.BatchNorm(in_channels=shape[1])
    ours.initialize()
    ref.initialize()
    if isinstance(ours, nn.HybridBlock):
        ours.hybridize()
    for i in range(3):
        X, head = batch(shape, i), batch(shape, 10 + i)
        for g, w in zip(step(ours, X, head), step(ref, X, head)):
            onp.testing.assert_allclose(g.asnumpy().ravel(), w.asnumpy().ravel(), rtol=1e-4,
                                        atol=1e-4)
    for name in ("moving_mean", "moving_var"):
        onp.testing.assert_allclose(getattr(ours, name).data().asnumpy().ravel(),
                                    getattr(ref, "running_" + name[7:]).data().asnumpy(),
                                    rtol=1e-4, atol=1e-4)
    X = batch(shape, 99)
    onp.testing.assert_allclose(ours(X).asnumpy(), ref(X).asnumpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("plain_cls, hybrid_cls", [(d2lbn.BatchNorm, d2lbn.HybridBatchNorm),
                                                   (FastBatchNorm, FastBatchNorm)])
@pytest.mark.parametrize("shape", [(6, 4, 5, 5), (10, 7)], ids=str)
def test_hybridized_equals_imperative(shape, plain_cls, hybrid_cls):
    check_hybridized_equals_imperative(plain_cls, hybrid_cls, shape)


@pytest.mark.parametrize("cls", [d2lbn.HybridBatchNorm, FastBatchNorm])
def test_hybrid_inside_hybrid_sequential_is_refused(cls):
    net = nn.HybridSequential()
    net.add(cls(3, 2))
    net.initialize()
    net.hybridize()
    with pytest.raises(TypeError, match="nn.Sequential"):
        net(batch((4, 3)))


@pytest.mark.parametrize("norm", ["scratch", "hybrid", "fast"])
def test_save_load_round_trip(tmp_path, norm):
    net = models.lenet(norm)
    net.initialize(mx.init.Xavier())
    train_steps(net)
    path = str(tmp_path / "lenet.params")
    net.save_parameters(path)
    clone = models.lenet(norm)
    clone.initialize()
    clone.load_parameters(path)
    assert not onp.allclose(clone[1].moving_var.data().asnumpy(), 1)  # statistics moved
    X = batch((5, 1, 28, 28), 42)
    onp.testing.assert_array_equal(clone(X).asnumpy(), net(X).asnumpy())


def test_net_on_second_cpu_context():
    ctx = mx.cpu(1)
    net = models.lenet("scratch")
    net.initialize(mx.init.Xavier(), ctx=ctx)
    X = batch((4, 1, 28, 28)).as_in_ctx(ctx)
    with autograd.record():
        Y = net(X)
    Y.backward()
    assert Y.ctx == ctx
    assert net[1].moving_mean.data(ctx).ctx == ctx
    assert not onp.allclose(net[1].moving_mean.data(ctx).asnumpy(), 0)


@pytest.mark.parametrize("cls", [d2lbn.BatchNorm, d2lbn.HybridBatchNorm, FastBatchNorm,
                                 Whitening, PITNorm])
def test_bad_input(cls):
    bn = cls(3, num_dims=4)
    bn.initialize()
    with pytest.raises(ValueError, match="4-D"):
        bn(batch((2, 3)))
    with pytest.raises(ValueError, match=r"3 channels.*got 5"):
        bn(batch((2, 5, 4, 4)))
    with pytest.raises(ValueError, match="floating-point.*int32"):
        bn(np.ones((2, 3, 4, 4), dtype="int32"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_features=0, num_dims=2), "num_features"),
    (dict(num_features=3, num_dims=6), "num_dims"),
    (dict(num_features=3, num_dims=2, momentum=1.5), "momentum"),
    (dict(num_features=3, num_dims=2, eps=0), "eps"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        d2lbn.BatchNorm(**kwargs)


def test_one_value_per_channel_warns_and_matches_gluon():
    ours, ref = d2lbn.BatchNorm(4, 2), nn.BatchNorm(in_channels=4)
    ours.initialize()
    ref.initialize()
    X = batch((1, 4))
    with pytest.warns(RuntimeWarning, match="one value per channel"):
        Y, _, _ = step(ours, X, np.ones((1, 4)))
    Y_ref, _, _ = step(ref, X, np.ones((1, 4)))
    onp.testing.assert_allclose(Y.asnumpy(), Y_ref.asnumpy(), atol=1e-5)
    onp.testing.assert_allclose(Y.asnumpy(), 0, atol=1e-5)  # only beta (0) passes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(X)  # prediction mode: the moving statistics are used, no warning


def test_lenet_variants():
    X = batch((2, 1, 28, 28))
    for kwargs in [dict(), dict(norm="gluon"), dict(norm=None), dict(placement="after"),
                   dict(dropout=0.5), dict(use_bias=False), dict(norm_conv=False),
                   dict(activation="relu"), dict(norm=lambda c, d: nn.LayerNorm())]:
        net = models.lenet(**kwargs)
        net.initialize()
        assert net(X).shape == (2, 10), kwargs
    assert isinstance(models.lenet()[1], d2lbn.BatchNorm)
    assert isinstance(models.lenet(placement="after")[2], d2lbn.BatchNorm)
    assert models.lenet(use_bias=False)[0].bias is None
    assert sum(isinstance(b, d2lbn.BatchNorm) for b in models.lenet(norm_dense=False)) == 2
    assert not any(isinstance(b, d2lbn.BatchNorm) for b in models.lenet(norm=None))
    with pytest.raises(ValueError, match="norm must be"):
        models.lenet("batch")
    with pytest.raises(ValueError, match="placement"):
        models.lenet(placement="middle")
    # Dropout after both hidden dense layers, or one rate each
    def dropout_rates(net):
        return [layer._rate for layer in net if isinstance(layer, nn.Dropout)]
    assert dropout_rates(models.lenet(dropout=0.5)) == [0.5, 0.5]
    net = models.lenet("gluon", dropout=(0.0, 0.3))
    assert dropout_rates(net) == [0.3] and isinstance(net[-2], nn.Dropout)
    for bad in (1.0, -0.1, (0.5,), (0.2, 1.0)):
        with pytest.raises(ValueError, match="dropout"):
            models.lenet(dropout=bad)


@pytest.mark.parametrize("cls", [d2lbn.BatchNorm, d2lbn.HybridBatchNorm, FastBatchNorm])
def test_each_device_keeps_its_own_statistics(cls):
    # Data parallelism without synchronisation: like Gluon's BatchNorm, each
    # context's moving statistics follow its own shard only
    ctxs = [mx.cpu(0), mx.cpu(1)]
    bn = cls(3, num_dims=4)
    bn.initialize(ctx=ctxs)
    shards = [batch((4, 3, 2, 2), seed=s).as_in_ctx(c) + 10 * s for s, c in enumerate(ctxs)]
    for X in shards:
        step(bn, X, np.ones_like(X))
    for X, ctx in zip(shards, ctxs):
        expected = 0.1 * X.asnumpy().mean(axis=(0, 2, 3))
        onp.testing.assert_allclose(bn.moving_mean.data(ctx).asnumpy().ravel(), expected,
                                    rtol=1e-5, atol=1e-6)


def test_lenet_container():
    # Notebook 02 prints the scratch net: its container must stay nn.Sequential
    assert type(models.lenet("scratch")) is nn.Sequential
    assert type(models.lenet("gluon")) is type(models.lenet(None)) is nn.HybridSequential
    for norm in ("hybrid", "fast", lambda c, d: nn.BatchNorm(in_channels=c)):
        assert isinstance(models.lenet(norm), models.LayerwiseSequential)


# -- bad input never corrupts a layer; one contract for every dtype ---------------------------

# name: (class, hybridize)
BLOCKS = {
    "BatchNorm": (d2lbn.BatchNorm, False),
    "HybridBatchNorm": (d2lbn.HybridBatchNorm, False),
    "HybridBatchNorm-hybridized": (d2lbn.HybridBatchNorm, True),
    "FastBatchNorm": (FastBatchNorm, False),
    "FastBatchNorm-hybridized": (FastBatchNorm, True),
    "Whitening": (Whitening, True),
    "PITNorm": (PITNorm, True),
}


def make_block(name, dtype="float32"):
    """A layer for (N, 3, H, W) input with ``dtype`` parameters, hybridized if its entry says so."""
    cls, hybridize = BLOCKS[name]
    bn = cls(3, num_dims=4)
    bn.initialize()
    if dtype != "float32":
        bn.cast(dtype)
    if hybridize:
        bn.hybridize()
    return bn


BAD_INPUT = {
    "empty batch": (lambda: batch((0, 3, 4, 4)), r"empty input of shape \(0, 3, 4, 4\)"),
    "no positions": (lambda: batch((2, 3, 4, 0)), "empty input"),
    "float64 input": (lambda: batch((2, 3, 4, 4)).astype("float64"),
                      "parameters are float32 but the input is float64"),
    # (the layers that cannot compute in float16 say so instead)
    "float16 input": (lambda: batch((2, 3, 4, 4)).astype("float16"),
                      "parameters are float32 but the input is float16"
                      "|computes in float32 or float64, not float16"),
    "1-D input": (lambda: batch((3,)), "expected 4-D input"),
    "5 channels": (lambda: batch((2, 5, 4, 4)), r"3 channels.*got 5"),
}


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("case", BAD_INPUT)
@pytest.mark.parametrize("name", BLOCKS)
def test_bad_input_leaves_the_layer_as_it_was(name, case, training):
    bn = make_block(name)
    X = batch((4, 3, 4, 4))
    step(bn, X, np.ones_like(X))  # statistics away from their initial values
    make, match = BAD_INPUT[case]
    # Refused before any statistic moves: every parameter the same, bit for bit
    check_refused(bn, make(), match, training=training)
    # (and the comparison would see a change: a good step still makes one)
    before = parameter_bytes(bn)
    step(bn, X + 1, np.ones_like(X))
    assert parameter_bytes(bn) != before


def test_empty_batch_no_longer_moves_the_statistics():
    # The case: moving_var went from 1 to 0.9 under a warning about
    # "one value per channel"; now an error, no warning, no change
    bn = d2lbn.BatchNorm(4, 2)
    bn.initialize()
    check_refused(bn, np.ones((0, 4)), "needs at least one value per channel")
    onp.testing.assert_array_equal(bn.moving_var.data().asnumpy(), 1)


LAYERS = ["BatchNorm", "HybridBatchNorm", "HybridBatchNorm-hybridized", "FastBatchNorm",
          "FastBatchNorm-hybridized"]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("name", LAYERS)
def test_each_dtype_is_honoured_or_refused(name, dtype):
    bn = make_block(name, dtype)
    shape = (4, 3, 5, 6)
    X, head = batch(shape, 1).astype(dtype), batch(shape, 2).astype(dtype)
    if BLOCKS[name][0] is FastBatchNorm and dtype == "float16":
        check_refused(bn, X, "float32 or float64, not float16")
        return
    one, zero = onp.ones((1, 3, 1, 1)), onp.zeros((1, 3, 1, 1))
    Y, dgamma, dbeta = step(bn, X, head)
    want = numpy_batch_norm(*float64([X]), one, zero, zero, one, *float64([head]))
    got = [Y, dgamma, dbeta, bn.moving_mean.data(), bn.moving_var.data()]
    assert_close_in(dtype, got, [want[i] for i in (0, 2, 3, 4, 5)],
                    names=["Y", "dgamma", "dbeta", "moving_mean", "moving_var"])
    stats = float64([bn.moving_mean.data(), bn.moving_var.data()])
    assert_close_in(dtype, [bn(X)], [numpy_prediction(*float64([X]), one, zero, *stats)])


@pytest.mark.parametrize("name", ["Whitening", "PITNorm"])
def test_whitening_refuses_float16(name):
    # Built from matrix products, as fast is: MXNet has none in float16 on CPU
    bn = make_block(name, "float16")
    check_refused(bn, batch((4, 3, 2, 2)).astype("float16"), "float32 or float64, not float16")
