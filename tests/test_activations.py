"""Sigmoid saturation: closed forms, a float64 NumPy forward pass, and the state left alone."""

from functools import partial

import numpy as onp
import pytest
from helpers import EPS, MOMENTUM, batch, numpy_batch_norm, parameter_bytes, train_steps
from mxnet import autograd, np
from mxnet.gluon import nn

import d2lbn
from d2lbn import models
from d2lbn.analysis import activations
from d2lbn.fast import FastBatchNorm


def test_saturation_matches_closed_forms():
    z = onp.array([[-40.0, 0.0], [-4.0, 0.5], [4.7, -1.0], [9.0, 2.0]])  # (N=4, C=2)
    got = activations.saturation(z)
    # slope s(1 - s) = 1 / (4 cosh^2(z / 2)); s within 0.01 of 0 or 1 <=> |tanh(z / 2)| > 0.98
    want_slope = (1 / (4 * onp.cosh(z / 2) ** 2)).mean() / 0.25
    assert got["saturated"] == pytest.approx((onp.abs(onp.tanh(z / 2)) > 0.98).mean())
    assert got["saturated"] == pytest.approx(3 / 8)  # -40, 4.7 and 9
    assert got["slope"] == pytest.approx(want_slope, rel=1e-12)
    s = 1 / (1 + onp.exp(-z))
    assert got["spread"] == pytest.approx(s.std(axis=0).mean(), rel=1e-12)


def test_saturation_extremes_and_spatial_axes():
    zeros = activations.saturation(onp.zeros((5, 3, 2, 2)))
    assert zeros == {"saturated": 0.0, "slope": 1.0, "spread": 0.0}
    # A channel far from zero: saturated, no slope; constant per channel: no spread
    far = activations.saturation(onp.full((5, 3, 2, 2), -1e4))
    assert far["saturated"] == 1.0 and far["slope"] == 0.0 and far["spread"] == 0.0
    # Where float32's sigmoid rounds to 1 (and its s (1 - s) to 0), the slope is still there
    assert activations.sigmoid_slope(30.0) == pytest.approx(onp.exp(-30.0), rel=1e-12)


def numpy_forward(net, X):
    """Float64 Dense -> BN (batch statistics) -> sigmoid -> Dense: sigmoid input and logits."""
    dense1, bn, _, dense2 = net
    W, b = (a.data().asnumpy().astype("float64") for a in (dense1.weight, dense1.bias))
    H = X @ W.T + b
    gamma, beta = (a.data().asnumpy().astype("float64") for a in (bn.gamma, bn.beta))
    Z = numpy_batch_norm(H, gamma, beta, 0, 1, 0 * H, eps=EPS)[0]  # batch statistics
    W2, b2 = (a.data().asnumpy().astype("float64") for a in (dense2.weight, dense2.bias))
    return Z, (1 / (1 + onp.exp(-Z))) @ W2.T + b2


@pytest.mark.parametrize("cls", [d2lbn.BatchNorm, FastBatchNorm])
def test_sigmoid_stats_match_numpy_and_leave_the_net_alone(cls):
    net = nn.Sequential()
    net.add(nn.Dense(6, in_units=4), cls(6, 2, eps=EPS, momentum=MOMENTUM),
            nn.Activation("sigmoid"), nn.Dense(3, in_units=6))
    net.initialize()
    rng = onp.random.default_rng(0)
    for param in net.collect_params().values():
        if param.grad_req != "null":
            param.set_data(np.array(rng.normal(0.3, 2.0, size=param.shape), dtype="float32"))
    X = batch((32, 4), 1)
    before = parameter_bytes(net)
    got = activations.sigmoid_stats(net, X)
    assert parameter_bytes(net) == before
    Z, logits = numpy_forward(net, X.asnumpy().astype("float64"))
    want = activations.saturation(Z)
    for key in ("saturated", "slope", "spread"):
        assert got[key] == [pytest.approx(want[key], rel=1e-4, abs=1e-5)], key
    counts = onp.bincount(logits.argmax(axis=1))
    assert got["top_class"] == pytest.approx(counts.max() / 32)


def test_sigmoid_stats_on_a_trained_hybridized_lenet(tmp_path):
    """Layer by layer on the compiled net: what hooks see in a whole forward of a plain copy."""
    make = partial(FastBatchNorm, normalize="rms")
    net = models.lenet(lambda c, d: make(c, num_dims=d))
    net.initialize()
    net.hybridize()
    train_steps(net, 2)
    X = batch((16, 1, 28, 28), 5)
    before = parameter_bytes(net)
    got = activations.sigmoid_stats(net, X)
    assert parameter_bytes(net) == before
    net.save_parameters(str(tmp_path / "lenet.params"))
    plain = models.lenet(lambda c, d: make(c, num_dims=d))
    plain.load_parameters(str(tmp_path / "lenet.params"))
    inputs = []
    for layer in plain:
        if isinstance(layer, nn.Activation):
            layer.register_forward_pre_hook(lambda _, args: inputs.append(args[0].asnumpy()))
    with autograd.train_mode():
        logits = plain(X).asnumpy()
    assert len(inputs) == 4
    want = [activations.saturation(Z) for Z in inputs]
    for key in ("saturated", "slope", "spread"):
        # Another kernel may round a value at the threshold to its other side: one of the
        # 16 x 84 values at the last sigmoid moves "saturated" by 1 / 1344 = 7.4e-4
        assert got[key] == pytest.approx([w[key] for w in want], rel=1e-4, abs=1e-3), key
    assert got["top_class"] == onp.bincount(logits.argmax(axis=1)).max() / 16


def test_a_net_without_sigmoids_is_refused():
    net = models.lenet("fast", activation="relu")
    net.initialize()
    with pytest.raises(ValueError, match="no sigmoid"):
        activations.sigmoid_stats(net, batch((4, 1, 28, 28)))
