"""Argument types and help shared by the `lab` subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", int, float)

ROOT_HELP = "studies folder (default $LAB_HOME/studies or ./studies)"


def bounded(kind: type[T], ok: Callable[[T], bool], expected: str) -> Callable[[str], T]:
    """An argparse type: `kind(text)` when it satisfies `ok` (NaN never does), else the error
    "'TEXT': expected EXPECTED" that the CLI prints after the flag's name."""

    def parse(text: str) -> T:
        try:   # ASCII only: int() and float() also read other scripts' digits ('٣', '𝟗')
            value = kind(text) if text.isascii() else None
        except ValueError:
            value = None
        if value is None or value != value or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return value

    parse.__name__ = kind.__name__   # argparse names the type in some messages
    return parse


# any whole number / number, in ASCII digits (plain `type=int` would read '٣' as 3)
whole = bounded(int, lambda n: True, "a whole number")
number = bounded(float, lambda x: True, "a number")

# bootstrap settings shared by `lab scale fit` and `lab study report`
samples = bounded(int, lambda n: n >= 0, "a whole number >= 0")
level = bounded(float, lambda x: 0 < x < 1, "a confidence level in (0, 1), e.g. 0.95")


def gpu_share(text: str) -> float | str:
    """--gpus-per-trial: a number of GPUs (fractions allowed), or auto (each trial's predicted memory's share)."""
    if text == "auto":
        return text
    try:
        value = number(text)
    except argparse.ArgumentTypeError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a non-negative number of GPUs, or auto")
    return value
