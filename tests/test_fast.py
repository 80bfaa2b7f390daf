"""What only the fast BN has: float32 accuracy, free batch size, LeNet use, the benchmark.

Its values, gradients and moving statistics are checked against MXNet's operator
with the book's function in test_functional.py and test_layers.py.
"""

import json
import math

import mxnet as mx
import numpy as onp
import pytest
from helpers import (
    NAMES,
    assert_close_in,
    batch,
    float64,
    numpy_batch_norm,
    ours,
    param_shape,
    train_steps,
)
from helpers import step as block_step
from mxnet import np

from d2lbn import models
from d2lbn.fast import FastBatchNorm, batch_norm_fast
from d2lbn.functional import channel_axes
from d2lbn.lab import bench


@pytest.mark.parametrize("shape", [(64, 3, 12, 12), (512, 4)], ids=str)
def test_float32_accuracy_with_large_mean(shape):
    """X = 1000 + N(0, 1): E[x^2] - E[x]^2 in float32 would lose the variance.

    1000^2 = 1e6, whose float32 spacing is 0.06: a naive one-pass variance is
    off by percents. The fast version must stay close to a float64 reference.
    """
    rng = onp.random.default_rng(3)
    ps = param_shape(shape)
    arrays = [1000 + rng.normal(size=shape), rng.uniform(0.5, 2, size=ps),
              rng.normal(size=ps), onp.zeros(ps), onp.ones(ps), rng.normal(size=shape)]
    inputs = [np.array(a, dtype="float32") for a in arrays]
    want = numpy_batch_norm(*[a.asnumpy().astype("float64") for a in inputs])
    for name, g, w in zip(NAMES, ours(*inputs, fn=batch_norm_fast), want):
        # within 1e-4 of the largest magnitude of each result (dgamma sums many terms)
        err = onp.abs(g.asnumpy() - w).max()
        assert err <= 1e-4 * max(1.0, onp.abs(w).max()), (name, err)
    # A naive one-pass variance really is wrong here, so the test means something
    X = inputs[0].asnumpy()
    axes = channel_axes(X.ndim)
    naive = (X * X).mean(axis=axes) - X.mean(axis=axes) ** 2
    assert onp.abs(naive - X.astype("float64").var(axis=axes)).max() > 1e-2


def test_batch_size_may_change_after_hybridizing():
    plain, hybrid = FastBatchNorm(3, 4), FastBatchNorm(3, 4)
    plain.initialize()
    hybrid.initialize()
    hybrid.hybridize()  # static_alloc and static_shape by default
    for n in (8, 4, 8, 5):
        X, head = batch((n, 3, 5, 5), n), batch((n, 3, 5, 5), 10 + n)
        for g, w in zip(block_step(hybrid, X, head), block_step(plain, X, head)):
            onp.testing.assert_allclose(g.asnumpy(), w.asnumpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(6, 3, 4, 5), (6, 3)], ids=str)
def test_cast_to_float64_after_hybridizing_retraces(shape):
    # The graph's constants are built in the traced input's dtype: a float32
    # trace must not serve float64 input (MXNet would refuse to mix them)
    bn = FastBatchNorm(3, len(shape))
    bn.initialize()
    bn.hybridize()
    block_step(bn, batch(shape, 1), batch(shape, 2))
    bn.cast("float64")
    X, head = batch(shape, 3).astype("float64"), batch(shape, 4).astype("float64")
    stats = float64([bn.moving_mean.data(), bn.moving_var.data()])
    Y, dgamma, dbeta = block_step(bn, X, head)
    ps = param_shape(shape)
    want = numpy_batch_norm(*float64([X]), onp.ones(ps), onp.zeros(ps), *stats, *float64([head]))
    assert_close_in("float64", [Y, dgamma, dbeta, bn.moving_mean.data(), bn.moving_var.data()],
                    [want[i] for i in (0, 2, 3, 4, 5)])


def test_block_bookkeeping_and_checks():
    bn = FastBatchNorm(3, num_dims=4)
    bn.initialize()
    assert bn.moving_mean.shape == (1, 3, 1, 1) and bn.moving_var.grad_req == "null"
    assert (bn.eps, bn.momentum) == (1e-5, 0.9)
    assert repr(bn) == "FastBatchNorm(3, num_dims=4, eps=1e-05, momentum=0.9)"
    with pytest.raises(ValueError, match=r"3 channels.*got 5"):
        bn(batch((2, 5, 4, 4)))
    with pytest.raises(ValueError, match="num_dims"):
        FastBatchNorm(3, num_dims=6)


def test_lenet_fast_trains_and_round_trips(tmp_path):
    net = models.lenet("fast")
    net.initialize(mx.init.Xavier())
    net.hybridize()
    train_steps(net, n=2)
    assert isinstance(net[1], FastBatchNorm)
    assert not onp.allclose(net[1].moving_var.data().asnumpy(), 1)  # statistics moved
    path = str(tmp_path / "lenet.params")
    net.save_parameters(path)
    clone = models.lenet("fast")
    clone.load_parameters(path)
    X = batch((5, 1, 28, 28), 42)
    onp.testing.assert_allclose(clone(X).asnumpy(), net(X).asnumpy(), rtol=1e-5, atol=1e-6)


def test_bench_quick_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = bench.main(["--json", str(path), "--batch-size", "8", "--batches", "2",
                       "--warmup", "1", "--reps", "2", "--copy-mb", "4",
                       "--shapes", "4x3x5x5,6x7"])
    assert code == 0
    result = json.loads(path.read_text())
    assert {"machine", "copy_gbps", "lenet", "ops"} <= set(result)
    assert result["copy_gbps"] == max(result["machine"]["copy_gbps_by"].values())
    assert [r["variant"] for r in result["lenet"]] == [
        "scratch", "scratch_hybrid", "scratch_fast", "scratch_cpp", "gluon", "gluon_hybrid",
        "none"]
    for r in result["lenet"]:
        # --batches 2 caps the 4 default rounds at 2, one batch each: the overall rate is
        # the examples over the rounds' summed times
        assert r["batches"] == len(r["rounds_examples_per_sec"]) == 2
        secs = sum(8 / rate for rate in r["rounds_examples_per_sec"])
        assert r["examples_per_sec"] == pytest.approx(16 / secs, rel=1e-12)
    ops = {(tuple(r["shape"]), r["variant"]) for r in result["ops"]}
    assert ops == {(s, v) for s in [(4, 3, 5, 5), (6, 7)]
                   for v in ["scratch", "scratch_hybrid", "scratch_fast", "scratch_cpp",
                             "gluon", "gluon_hybrid"]}
    for r in result["ops"]:
        # the floor: the shape's float32 bytes at the copy bandwidth
        floor_ms = math.prod(r["shape"]) * bench.BYTES_PER_ELEMENT / result["copy_gbps"] / 1e6
        assert r["floor_ms"] == pytest.approx(floor_ms, rel=1e-12)
        # the 1x1 convolution reference: 4-D shapes only
        assert (r["conv1x1_ms"] is not None) == (len(r["shape"]) == 4)
    out = capsys.readouterr().out
    assert "examples/s" in out and "1x1 conv" in out
    # after a convolution: the built-in and the C++ BN, 4-D shapes only
    for r in result["ops"]:
        timed = len(r["shape"]) == 4 and r["variant"] in ("gluon_hybrid", "scratch_cpp")
        assert (r["conv_bn_ms"] is not None) == timed
    assert "after a 1x1 convolution" in out


def test_round_ratios_pair_rounds():
    row = {"rounds_examples_per_sec": [90.0, 200.0, 100.0]}
    ref = {"rounds_examples_per_sec": [100.0, 100.0, 125.0]}
    assert bench.round_ratios(row, ref) == (0.8, 2.0)
    table = bench.table({"copy_gbps": 1.0, "machine": {"cpu": "x", "cores": 1}, "ops": [],
                         "lenet": [dict(row, variant="scratch_fast", examples_per_sec=120.0),
                                   dict(ref, variant="gluon_hybrid", examples_per_sec=100.0)]})
    assert "scratch_fast" in table and "1.20     0.80-2.00" in table


def test_quick_mode_is_bench_quick(monkeypatch):
    assert not bench.parse_args([]).quick
    monkeypatch.setenv("D2LBN_QUICK", "1")
    args = bench.parse_args([])
    assert args.quick and args.batches == 20 and args.reps == 5
    calls = []
    times = iter([0.004, 0.001, 0.003, 0.002, 0.009, 0.005, 0.008, 0.007, 0.006])
    monkeypatch.setattr(bench, "_timed", lambda fn: (fn(), next(times))[1])
    # quick mode caps the 25 repetitions at 8: the median of the first 8 times, in ms
    assert bench.median_ms(lambda: calls.append(1), reps=25) == pytest.approx(4.5)
    assert len(calls) == 1 + 8  # a warm-up, then quick mode's capped repetitions
