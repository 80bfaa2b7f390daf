"""The benchmark's loop section and its Markdown: figures of one run, consistent with each other."""

import argparse

import mxnet as mx
import pytest

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
