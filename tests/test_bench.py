"""The benchmark's loop section and its Markdown: figures of one run, consistent with each other."""

import argparse

import mxnet as mx
import numpy as onp
import pytest
from mxnet import autograd, np

from d2lbn.lab import bench


def test_loop_ratio_is_the_two_rates_of_the_same_rounds():
    args = argparse.Namespace(batches=3, rounds=3, warmup=1, batch_size=8)
    batches = bench.synthetic_batches(8, mx.cpu(), n=2)
    loop = bench.bench_loop(args, mx.cpu(), batches, log=lambda *_: None)
    rates = loop["train_loop_examples_per_sec"], loop["read_every_batch_examples_per_sec"]
    assert loop["ratio"] == pytest.approx(rates[0] / rates[1], rel=1e-12)
    assert len(loop["rounds_ratio"]) == 3
    # The overall ratio is the rounds' summed times over each other: within their range
    assert min(loop["rounds_ratio"]) <= loop["ratio"] * (1 + 1e-9)
    assert loop["ratio"] <= max(loop["rounds_ratio"]) * (1 + 1e-9)


def test_synthetic_batches_repeat():
    a, b = (bench.synthetic_batches(4, mx.cpu(), n=2) for _ in range(2))
    assert all((x == y).all() for (x, _), (y, _) in zip(a, b))


def test_markdown_holds_the_tables_and_what_each_variant_is():
    result = {"copy_gbps": 2.0, "machine": {"cpu": "a CPU", "cores": 2, "mxnet": "1.9.1",
                                            "python": "3.11"},
              "descriptions": {"loop": "two loops"}, "ops": [], "lenet": [],
              "loop": {"train_loop_examples_per_sec": 150.0,
                       "read_every_batch_examples_per_sec": 100.0, "ratio": 1.5,
                       "rounds_ratio": [1.4, 1.6]}}
    md = bench.markdown(result)
    assert "a CPU, 2 cores" in md and "- **loop**: two loops" in md
    assert "150 examples/s against 100 reading every batch: 1.50x (per round 1.40-1.60)" in md


def test_the_call_floor_is_one_recorded_forward_and_backward():
    X = np.array(onp.arange(6.0).reshape(2, 3), dtype="float32")
    head = np.array(onp.full((2, 3), 0.5), dtype="float32")
    X.attach_grad()
    forward = bench._call_forward(X)
    with autograd.record():
        Y = forward()
    Y.backward(head)
    assert (Y == X).all() and (X.grad == head).all()  # X * 1: the head passes through


def test_ops_table_shows_the_call_floor_per_shape():
    rows = [{"shape": [8, 3], "variant": v, "fwd_bwd_ms": 2.0, "floor_ms": 0.01,
             "call_ms": 0.125, "conv1x1_ms": None} for v in bench.OP_VARIANTS]
    text = bench.table({"copy_gbps": 1.0, "machine": {"cpu": "c", "cores": 1}, "lenet": [],
                        "ops": rows})
    header, row = text.splitlines()[-2:]
    assert header.split()[-3:] == ["call", "1x1", "conv"] and row.split()[-2:] == ["0.125", "-"]
