"""Reading BN layers' prediction statistics and re-estimating them exactly on data."""

import mxnet as mx
import numpy as onp
import pytest
from helpers import batch, train_steps
from mxnet import autograd, np
from mxnet.gluon import nn

from d2lbn import models, train
from d2lbn.analysis import bnstats, fold


def trained(norm, hybridize=True):
    net = models.lenet(norm)
    net.initialize(mx.init.Xavier())
    train_steps(net)  # moving statistics now somewhere between init and the data
    if hybridize:
        net.hybridize()
    return net


@pytest.mark.parametrize("norm", ["gluon", "fast", "scratch"])
def test_one_batch_stats_make_prediction_equal_training_mode(norm):
    net = trained(norm, hybridize=norm != "scratch")
    X = batch((16, 1, 28, 28), seed=5)
    with autograd.train_mode():
        expected = net(X).asnumpy()  # every BN normalises with this batch's statistics
    assert not onp.allclose(net(X).asnumpy(), expected, atol=1e-3)
    assert bnstats.precise_bn_stats(net, [(X, None)]) == 4
    onp.testing.assert_allclose(net(X).asnumpy(), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("normalize", ["mean", "var", "rms"])
def test_lite_forms_re_estimated_predict_as_training_mode(normalize):
    # Each lite form predicts with the same two statistics; exact ones of a batch make
    # prediction on it what training mode gives (notebook 08 scores them this way)
    from d2lbn.fast import FastBatchNorm
    net = trained(lambda c, d: FastBatchNorm(c, num_dims=d, normalize=normalize))
    X = batch((16, 1, 28, 28), seed=5)
    with autograd.train_mode():
        expected = net(X).asnumpy()
    assert not onp.allclose(net(X).asnumpy(), expected, atol=1e-3)
    assert bnstats.precise_bn_stats(net, [(X, None)]) == 4
    onp.testing.assert_allclose(net(X).asnumpy(), expected, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="expected full batch norm"):
        fold.bn_affine(net[1])  # what needs the full form's formula still refuses


def test_stats_over_batches_are_those_of_their_union():
    net = trained("gluon")
    X1, X2 = batch((8, 1, 28, 28), seed=1), batch((24, 1, 28, 28), seed=2)
    bnstats.precise_bn_stats(net, [(X1, None), (X2, None), (X1, None)], num_batches=2)
    first = net[0](np.concatenate([X1, X2])).asnumpy().astype(onp.float64)  # the first conv
    mean, var, _ = bnstats.running_stats(net[1])
    onp.testing.assert_allclose(mean.data().asnumpy(), first.mean(axis=(0, 2, 3)), rtol=1e-5)
    onp.testing.assert_allclose(var.data().asnumpy(), first.var(axis=(0, 2, 3)), rtol=1e-4)


def test_running_stats_of_both_kinds_and_bad_input():
    gluon_bn, ours = models.lenet("gluon")[1], models.lenet("fast")[1]
    assert bnstats.running_stats(gluon_bn)[0] is gluon_bn.running_mean
    assert bnstats.running_stats(ours)[:2] == (ours.moving_mean, ours.moving_var)
    assert bnstats.is_batch_norm(ours) and not bnstats.is_batch_norm(nn.Dense(3))
    with pytest.raises(TypeError, match="not a batch norm"):
        bnstats.running_stats(nn.Dense(3))
    with pytest.raises(ValueError, match="no batch norm"):
        bnstats.precise_bn_stats(models.lenet(None), [])
    with pytest.raises(ValueError, match="no batches"):
        bnstats.precise_bn_stats(trained("gluon"), [])


def test_gluon_batchnorm_moves_its_statistics_only_in_backward_on_cpu():
    # The MXNet behaviour that makes "just run forward in training mode" re-estimate nothing
    bn = nn.BatchNorm(in_channels=3)
    bn.initialize()
    X = batch((8, 3, 4, 4))
    with autograd.record():
        Y = bn(X)
    onp.testing.assert_array_equal(bn.running_mean.data().asnumpy(), 0)
    Y.backward()
    assert onp.abs(bn.running_mean.data().asnumpy()).min() > 0.1


def test_moving_stats_error_measures_and_restores():
    net = trained("gluon")
    X = batch((16, 1, 28, 28), seed=5)
    before = [p.data().asnumpy() for p in bnstats.running_stats(net[1])[:2]]
    errors = bnstats.moving_stats_error(net, [(X, None)])
    assert len(errors["mean"]) == len(errors["var"]) == len(errors["var_ratio"]) == 4
    # The first BN layer's, from its input's float64 statistics
    first = net[0](X).asnumpy().astype(onp.float64)
    mean, var = first.mean(axis=(0, 2, 3)), first.var(axis=(0, 2, 3))
    moving_mean, moving_var = (p.astype(onp.float64) for p in before)
    want = {"mean": (abs(moving_mean - mean) / onp.sqrt(var)).mean(),
            "var": abs(moving_var / var - 1).mean(), "var_ratio": (moving_var / var).mean()}
    for key, value in want.items():
        assert errors[key][0] == pytest.approx(value, rel=1e-4), key
    for p, old in zip(bnstats.running_stats(net[1])[:2], before):
        onp.testing.assert_array_equal(p.data().asnumpy(), old)
    bnstats.precise_bn_stats(net, [(X, None)])
    exact = bnstats.moving_stats_error(net, [(X, None)])
    assert max(exact["mean"]) < 1e-4 and max(exact["var"]) < 1e-4


@pytest.mark.parametrize("norm", ["gluon", "scratch", None])
def test_precise_accuracy_scores_as_training_mode_on_the_batch_it_re_estimated(norm):
    # Labelled with the net's own training-mode predictions, the batch scores 1 exactly when
    # prediction normalises with its statistics; the moving averages score it lower
    net = trained(norm, hybridize=norm == "gluon")
    X = batch((64, 1, 28, 28), seed=6)
    with autograd.train_mode():
        y = np.array(net(X).asnumpy().argmax(axis=1), dtype="int32")
    before = train.evaluate_accuracy(net, [(X, y)])
    assert (before == 1.0) == (norm is None)
    assert bnstats.precise_accuracy(net, [(X, y)], [(X, y)]) == 1.0
