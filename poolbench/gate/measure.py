"""Timing one case as a ratio to ``avg_pool2d``, interleaved within pytest-benchmark rounds.

One ``benchmark.pedantic`` round is a single pooler call, and before each
round the ``setup`` hook times one ``avg_pool2d`` call on the same input and
pass.  The ratio is the measurement core's one definition
(:func:`poolbench.measure.paired_ratio`, as ``poolbench run`` and
``layerbench`` use): the median over rounds of each round's pooler time over
the comparator time measured just before it.  A burst of load from another
process slows both sides of a round alike, so it cancels.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable

from ..measure.config import BenchConfig
from ..measure.subject import paired_ratio


class _ComparatorSampler:
    """``pedantic`` setup hook: times one comparator call before each pooler round."""

    def __init__(self, fn: Callable[[], None], timer: Callable[[], float]):
        self.fn, self.timer, self.times = fn, timer, []

    def __call__(self) -> None:
        start = self.timer()
        self.fn()
        self.times.append(self.timer() - start)


def _time_once(fn: Callable[[], None], timer: Callable[[], float] = time.perf_counter) -> float:
    start = timer()
    fn()
    return timer() - start


def time_case(benchmark, fn: Callable[[], None], comparator: Callable[[], None], config: BenchConfig,
              warmup: int = 1) -> dict:
    """Time ``fn`` with pytest-benchmark, interleaved with the ``comparator`` (``avg_pool2d``); return the ratio info.

    The number of rounds fills ``config.budget_s`` (bounded by min/max
    rounds).  Returns ``{"ratio", "paired_ratio", "median_ratio",
    "min_ratio", "comparator_median_s", "rounds"}`` — ``ratio`` is the paired
    ratio (``paired_ratio`` repeats it for older readers; ``median_ratio``,
    the ratio of medians, and ``min_ratio`` are kept for judging noise) — or
    ``{}`` when pytest-benchmark is disabled.
    """
    for _ in range(warmup):  # first calls pay one-off costs (torch.compile, allocator growth)
        fn()
        comparator()
    probe = _time_once(fn, config.timer) + _time_once(comparator, config.timer)
    rounds = int(min(config.max_rounds, max(config.min_rounds, math.ceil(config.budget_s / max(probe, 1e-7)))))
    # Both sides are read with the config's clock; pytest-benchmark keeps its clock in a private
    # attribute, set here so a direct `pytest -m bench` run without --benchmark-timer agrees.
    if hasattr(benchmark, "_timer"):
        benchmark._timer = config.timer
    sampler = _ComparatorSampler(comparator, config.timer)
    benchmark.pedantic(fn, setup=sampler, rounds=rounds, warmup_rounds=0, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if not stats:  # --benchmark-disable: the call above ran fn once, as a smoke test
        return {}
    pooler_times = list(stats.stats.data)
    comparator_times = sampler.times[-len(pooler_times):]
    comparator_median = statistics.median(comparator_times)
    paired = paired_ratio(pooler_times, comparator_times)
    return {
        "ratio": paired,
        "paired_ratio": paired,
        "median_ratio": statistics.median(pooler_times) / comparator_median,
        "min_ratio": min(pooler_times) / min(comparator_times),
        "comparator_median_s": comparator_median,
        "rounds": rounds,
    }
