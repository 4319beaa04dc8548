"""argparse value types shared by the subcommands."""

from __future__ import annotations

import argparse


def _int_at_least(text: str, low: int) -> int:
    """An integer >= low, or argparse's error naming what was wrong."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0 (a learning rate, a scale, a time budget)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (0.0 < value < float("inf")):  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def share(text: str) -> float:
    """A share between 0 and 1, for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def nonempty(text: str) -> str:
    """argparse type: a name or path that is not blank (`--out "$UNSET"` must not fall back to a default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text
