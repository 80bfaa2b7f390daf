"""Folding BN into the layer before it: same predictions, fewer layers."""

import mxnet as mx
import numpy as onp
import pytest
from mxnet import gluon, np
from mxnet.gluon import nn

import d2lbn
from d2lbn import models, train
from d2lbn.analysis import fold
from d2lbn.fast import FastBatchNorm


def trained(norm, use_bias=True):
    """A LeNet after a few SGD steps, so that the BN statistics are not the initial ones."""
    net = models.lenet(norm, use_bias=use_bias)
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = onp.random.default_rng(0)
    for _ in range(5):
        X = np.array(rng.uniform(size=(16, 1, 28, 28)), dtype="float32")
        y = np.array(rng.integers(0, 10, size=16), dtype="float32")
        train.sgd_step(net, trainer, loss, X, y)
    return net


@pytest.mark.parametrize("norm", ["scratch", "hybrid", "gluon"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_folded_net_predicts_the_same(norm, use_bias):
    net = trained(norm, use_bias)
    folded = fold.fold_batch_norm(net)
    assert len(folded) == len(net) - 4
    assert not any(isinstance(b, (nn.BatchNorm, d2lbn.BatchNorm, d2lbn.HybridBatchNorm))
                   for b in folded)
    X = np.array(onp.random.default_rng(1).uniform(size=(8, 1, 28, 28)), dtype="float32")
    onp.testing.assert_allclose(folded(X).asnumpy(), net(X).asnumpy(), rtol=1e-4, atol=1e-5)


def test_bn_affine_matches_the_layer_in_prediction_mode():
    bn = nn.BatchNorm(in_channels=3)
    bn.initialize()
    bn.running_mean.set_data(np.array([1.0, -2.0, 0.5]))
    bn.running_var.set_data(np.array([4.0, 0.25, 1.0]))
    bn.gamma.set_data(np.array([2.0, 1.0, -1.0]))
    scale, shift = fold.bn_affine(bn)
    X = np.array(onp.random.default_rng(2).normal(size=(5, 3)), dtype="float32")
    onp.testing.assert_allclose((X * scale + shift).asnumpy(), bn(X).asnumpy(), rtol=1e-5,
                                atol=1e-5)


def test_refuses_what_it_cannot_fold():
    with pytest.raises(TypeError, match="not a batch norm"):
        fold.bn_affine(nn.Dense(3))
    bn = nn.BatchNorm(in_channels=3)
    bn.initialize()
    with pytest.raises(TypeError, match="cannot fold"):
        fold.fold_layer(nn.MaxPool2D(), bn)
    dense = nn.Dense(3, activation="relu", in_units=2)
    dense.initialize()
    with pytest.raises(ValueError, match="without activation"):
        fold.fold_layer(dense, bn)


def test_refuses_lite_batch_norm():
    with pytest.raises(ValueError, match="normalize='mean'"):
        fold.bn_affine(FastBatchNorm(3, num_dims=4, normalize="mean"))
