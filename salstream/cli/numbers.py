"""Numeric command-line options: finite, in range, refused by argparse with the option's name.

``type=number(int, 1, 1000)`` gives ``argument --steps: 0 is out of range: expected an
integer from 1 to 1000`` and exit 2, instead of a value that later crashes a thread or hangs.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, Optional, Union

Num = Union[int, float]


def number(kind: type = float, lo: Optional[Num] = None, hi: Optional[Num] = None, *,
           lo_open: bool = False) -> Callable[[str], Num]:
    """An argparse ``type``: parses ``kind`` (int or float), refuses NaN/infinity and values outside
    ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    noun = "an integer" if kind is int else "a number"
    if lo is not None and hi is not None:
        want = f"{noun} {'above' if lo_open else 'from'} {lo:g} {'and at most' if lo_open else 'to'} {hi:g}"
    elif lo is not None:
        want = f"{noun} {'above' if lo_open else 'of at least'} {lo:g}"
    else:
        want = f"{noun} of at most {hi:g}" if hi is not None else noun

    def parse(text: str) -> Num:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text} is out of range: expected {want}")
        return value

    parse.__name__ = "int" if kind is int else "float"
    return parse


def attempts_or_forever(text: str) -> Optional[int]:
    """``forever`` (None) or a number of attempts ≥ 0."""
    if text.strip().lower() in ("forever", "inf", "infinite"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 10 ** 9:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of attempts (0 or more) or 'forever'")
    return value


def off_or(parse: Callable[[str], Num]) -> Callable[[str], Num]:
    """``parse``, but 0 (meaning off) is accepted as well."""
    def zero_or(text: str) -> Num:
        try:
            if float(text) == 0:
                return 0
        except ValueError:
            pass
        return parse(text)
    zero_or.__name__ = parse.__name__
    return zero_or


# Shared ranges (generous: they only keep out what cannot work).
SECONDS = number(float, 0, 10 ** 7, lo_open=True)          # a duration: > 0, under four months
WAIT_SECONDS = number(float, 0, 86_400)                     # a wait: 0 … one day
MILLISECONDS = number(float, 0, 600_000)                    # 0 … ten minutes
COUNT = number(int, 1, 10 ** 12)                            # how many of something: ≥ 1
THREADS = number(int, 1, 1024)
SEED = number(int, 0, 2 ** 63 - 1)
