"""Run modes: full (the book's settings) and quick (``D2LBN_QUICK=1``, for CI).

The one place quick mode is decided. Notebooks ask it for their data, epochs and
steps (``lab.load_data``, ``lab.epochs``, ``lab.steps``); the library functions
they then call do exactly what their arguments say.
"""

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


def name() -> str:
    """``"quick"`` or ``"full"``."""
    return "quick" if is_quick() else "full"


def announce() -> None:
    """Print, once per process, that quick mode shrinks data, epochs and steps."""
    global _announced
    if is_quick() and not _announced:
        _announced = True
        print(f"[d2lbn] quick mode ({QUICK_ENV}=1): {QUICK_TRAIN} training and "
              f"{QUICK_TEST} test examples, at most {QUICK_EPOCHS} epochs and "
              f"{QUICK_STEPS} steps")


def epochs(num_epochs: int) -> int:
    """``num_epochs``, capped in quick mode."""
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be at least 1, got {num_epochs}")
    return _capped(num_epochs, QUICK_EPOCHS)


def steps(num_steps):
    """``num_steps`` (a count, or a list of checkpoints), capped in quick mode.

    A list comes back sorted without duplicates, so that checkpoints stay increasing.
    """
    if isinstance(num_steps, int):
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        return _capped(num_steps, QUICK_STEPS)
    return sorted({steps(int(s)) for s in num_steps})


def load_data(batch_size: int, num_train: int | None = None, **kwargs):
    """``data.load_data_fashion_mnist``, on the first examples only in quick mode."""
    from .. import data

    num_test = None
    if is_quick():
        announce()
        num_train = min(num_train or QUICK_TRAIN, QUICK_TRAIN)
        num_test = QUICK_TEST
    return data.load_data_fashion_mnist(batch_size, num_train=num_train, num_test=num_test,
                                        **kwargs)


def _capped(n: int, cap: int) -> int:
    if is_quick():
        announce()
        return min(n, cap)
    return n
