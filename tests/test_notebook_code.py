"""The chapter's code on the notebooks' pages computes what the package's tested code computes."""

from __future__ import annotations

import json
from pathlib import Path

import mxnet as mx
import numpy as onp
import pytest
from mxnet import autograd, gluon, np
from mxnet.gluon import nn

import d2lbn
from d2lbn import models, train

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def define(stem: str, *starts: str, **names) -> dict:
    """Run the code cells of notebook ``stem`` that begin with ``starts``, in that order."""
    cells = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    namespace = {"mx": mx, "np": np, "onp": onp, "autograd": autograd, "nn": nn,
                 "d2lbn": d2lbn, **names}
    for start in starts:
        found = [s for s in sources if s.startswith(start)]
        assert len(found) == 1, f"{stem}: {len(found)} cells begin with {start!r}"
        exec(compile(found[0], f"{stem}.ipynb", "exec"), namespace)
    return namespace


BOOK = define("01_batch_norm_from_scratch", "def batch_norm(", "class BatchNorm(")
SHAPES = [(8, 5), (6, 3, 4, 4)]


def close(a, b, tol=1e-5):
    return onp.allclose(a.asnumpy(), b.asnumpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", SHAPES)
def test_notebook_batch_norm_is_the_package_function(shape):
    onp.random.seed(0)
    X = np.array(onp.random.normal(2, 3, size=shape), dtype="float32")
    p_shape = (1, shape[1]) + (1,) * (len(shape) - 2)
    gamma = np.array(onp.random.uniform(0.5, 2, size=p_shape), dtype="float32")
    beta = np.array(onp.random.normal(size=p_shape), dtype="float32")
    head = np.array(onp.random.normal(size=shape), dtype="float32")
    results = []
    for fn in (BOOK["batch_norm"], d2lbn.batch_norm):
        inputs = [X.copy(), gamma.copy(), beta.copy()]
        for a in inputs:
            a.attach_grad()
        with autograd.record():
            Y, mean, var = fn(*inputs, np.zeros(p_shape), np.ones(p_shape), 1e-5, 0.9)
        Y.backward(head)
        predicted = fn(*inputs, mean, var, 1e-5, 0.9)[0]
        results.append([Y, mean, var, predicted] + [a.grad for a in inputs])
    for name, a, b in zip(["Y", "moving mean", "moving var", "prediction", "dX", "dgamma",
                           "dbeta"], *results):
        assert close(a, b), name


@pytest.mark.parametrize("shape", SHAPES)
def test_notebook_block_is_the_package_block(shape):
    num_dims = len(shape)
    layers = [BOOK["BatchNorm"](shape[1], num_dims=num_dims), d2lbn.BatchNorm(shape[1], num_dims)]
    onp.random.seed(1)
    batches = [np.array(onp.random.normal(1, 2, size=shape), dtype="float32") for _ in range(3)]
    results = []
    for layer in layers:
        layer.initialize()
        steps = []
        for X in batches:  # a few steps, so the moving statistics compound
            X = X.copy()
            X.attach_grad()
            with autograd.record():
                loss = (layer(X) ** 3).sum()
            loss.backward()
            steps += [X.grad, layer.gamma.grad(), layer.beta.grad()]
        # the book keeps plain arrays, the package Parameters (so save_parameters keeps them)
        moving = [m.data() if isinstance(m, gluon.Parameter) else m
                  for m in (layer.moving_mean, layer.moving_var)]
        results.append(steps + moving + [layer(batches[0])])
    for i, (a, b) in enumerate(zip(*results)):
        assert close(a, b, 1e-4), i


def test_notebook_block_moves_its_statistics_to_the_input_device():
    layer = BOOK["BatchNorm"](3, num_dims=2)
    layer.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    X = np.ones((4, 3), ctx=mx.cpu(1))
    with autograd.record():
        layer(X)
    assert layer.moving_mean.ctx == mx.cpu(1) and layer.moving_var.ctx == mx.cpu(1)


@pytest.mark.parametrize("stem,norm", [("02_lenet_batch_norm_scratch", "scratch"),
                                       ("03_lenet_batch_norm_concise", "gluon"),
                                       ("07_exercise_bn_every_layer", "gluon"),
                                       ("14_practice_bn_dropout_order", "gluon")])
def test_notebook_lenet_is_the_package_lenet(stem, norm):
    X = np.array(onp.random.default_rng(0).normal(size=(4, 1, 28, 28)), dtype="float32")
    outputs = []
    for make in (define(stem, "def lenet_bn(")["lenet_bn"], lambda: models.lenet(norm)):
        train.seed_all(0)
        net = make()
        net.initialize(mx.init.Xavier())
        with autograd.record():
            outputs.append(net(X))
        assert len(net) == 15
    assert close(*outputs)
