"""Argument types shared by the subcommands: every numeric option is bounded.

Why: an unbounded option is a hang or a crash waiting to happen
(``--min-run-time inf`` used to time forever); argparse reports a bad value
as a one-line usage error before anything is measured.
"""
from __future__ import annotations

import argparse
import math


def _bounded(convert, noun: str, low: float, high: float, *, low_inclusive: bool):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:  # also a 5,000-digit integer (Python refuses to parse it)
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text[:40]!r}") from None
        # compared as they are: math.isfinite(10**400) would raise OverflowError, not say "out of range"
        finite = not isinstance(value, float) or math.isfinite(value)
        above_low = low <= value if low_inclusive else low < value
        if not (finite and above_low and value <= high):
            interval = f"{'[' if low_inclusive else '('}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be a finite value in {interval}, got {text[:40]}")
        return value

    parse.__name__ = noun.split()[-1]  # argparse names the type in its messages
    return parse


def bounded_int(low: int, high: int):
    """An argparse ``type`` accepting integers in ``[low, high]``."""
    return _bounded(int, "an integer", low, high, low_inclusive=True)


def bounded_float(low: float, high: float):
    """An argparse ``type`` accepting finite numbers in ``(low, high]`` (``low`` itself excluded)."""
    return _bounded(float, "a number", low, high, low_inclusive=False)


def add_training_options(parser, *, subject: str) -> None:
    """``--timing``, ``--amp`` and ``--channels-last``: how ``subject`` is timed and run, as people train.

    Shared by ``run`` and ``layerbench`` so both spell and document them alike.
    """
    parser.add_argument("--timing", choices=("eager", "graph"), default="eager",
                        help=f"eager (default): each {subject} call launched from Python, timed with CUDA events "
                             "(torch.utils.benchmark on CPU); graph (CUDA only): also capture the call in a CUDA "
                             "graph after warm-up and time its replays (the device work alone); the report shows "
                             "both and flags host-bound rows")
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                        help="run forwards and training steps under torch.autocast with this dtype (default off); "
                             "bf16 works on CPU too")
    parser.add_argument("--channels-last", action="store_true",
                        help="modules and inputs in channels-last memory format")
