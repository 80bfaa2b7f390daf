"""Shared fixtures: every test starts from the same seeds, in full mode."""

import random

import mxnet as mx
import numpy as onp
import pytest

import d2lbn  # noqa: F401  (sets MXNet's NumPy mode)


@pytest.fixture(autouse=True)
def _seeded(monkeypatch):
    monkeypatch.delenv("D2LBN_QUICK", raising=False)
    random.seed(0)
    onp.random.seed(0)
    mx.random.seed(0)
