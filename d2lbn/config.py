"""Run modes: full (the book's settings) and quick (``D2LBN_QUICK=1``, for CI)."""

from __future__ import annotations

import os

QUICK_ENV = "D2LBN_QUICK"
QUICK_TRAIN = 2048  # first examples of the training set kept in quick mode
QUICK_TEST = 1024  # first examples of the test set kept in quick mode
QUICK_EPOCHS = 2
QUICK_STEPS = 8  # cap on step-counted experiments in quick mode

_announced = False


def is_quick() -> bool:
    """Whether quick mode is on (``D2LBN_QUICK`` set to anything but '', '0')."""
    return os.environ.get(QUICK_ENV, "") not in ("", "0")


def announce() -> None:
    """Print, once per process, that quick mode shrinks data and epochs."""
    global _announced
    if is_quick() and not _announced:
        _announced = True
        print(f"[d2lbn] quick mode ({QUICK_ENV}=1): {QUICK_TRAIN} training and "
              f"{QUICK_TEST} test examples, at most {QUICK_EPOCHS} epochs")


def epochs(num_epochs: int) -> int:
    """The number of epochs to run: ``num_epochs``, capped in quick mode."""
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be at least 1, got {num_epochs}")
    return _capped(num_epochs, QUICK_EPOCHS)


def steps(num_steps: int) -> int:
    """The number of SGD steps to run: ``num_steps``, capped in quick mode."""
    return _capped(num_steps, QUICK_STEPS)


def _capped(n: int, cap: int) -> int:
    if is_quick():
        announce()
        return min(n, cap)
    return n
