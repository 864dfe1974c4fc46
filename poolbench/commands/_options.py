"""Argument types shared by the subcommands: every numeric option is bounded.

Why: an unbounded option is a hang or a crash waiting to happen
(``--min-run-time inf`` used to time forever); argparse reports a bad value
as a one-line usage error before anything is measured.
"""
from __future__ import annotations

import argparse
import math


def bounded_int(low: int, high: int):
    """An argparse ``type`` accepting integers in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def bounded_float(low: float, high: float):
    """An argparse ``type`` accepting finite numbers in ``(low, high]`` (``low`` itself excluded)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or not low < value <= high:
            raise argparse.ArgumentTypeError(f"must be a finite number in ({low:g}, {high:g}], got {text}")
        return value

    parse.__name__ = "number"
    return parse
