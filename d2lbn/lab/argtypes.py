"""Argument types the command line's subcommands share: clear errors for bad values."""

from __future__ import annotations

import argparse
import math


def at_least(low: int):
    """An argparse type: a whole number no smaller than ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def seed(text: str) -> int:
    """An argparse type: a seed NumPy accepts, 0 to 2**32 - 1."""
    value = at_least(0)(text)
    if value >= 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
