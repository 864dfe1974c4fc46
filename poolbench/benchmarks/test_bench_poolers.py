"""pytest-benchmark suite: every registered pooler × tier at VGG-16's pooling shapes.

Registry-driven: a new pooler or tier is benchmarked as soon as it is
registered.  Each case first proves the tier equals its reference
(:func:`poolbench.gate.equivalence_at`), then times it interleaved with
``avg_pool2d`` and stores the ratio in ``extra_info``.  Marked ``bench``;
``poolbench compare`` runs it against the stored baseline (``--baseline-dir``,
default ``benchmarks/baselines`` of the current directory).  The cases (fixture ``case``)
are generated in ``conftest.py`` from the ``--bench-*`` options.
"""
from __future__ import annotations

import pytest

from poolbench import gate, registry

pytestmark = pytest.mark.bench


def test_plugins_load():
    """A plugin that fails to import would silently drop its poolers from the gate."""
    errors = registry.load_plugins()
    assert not errors, "plugins failed to load: " + "; ".join(f"{name}: {error}" for name, error in errors.items())


@pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")  # a case that fails equivalence is not timed
def test_pooler(case, bench_config, benchmark):
    benchmark.group = case.group
    equivalence = gate.equivalence_at(case.pooler, case.tier, case.shape, bench_config)
    benchmark.extra_info.update(gate.extra_info(case, bench_config, equivalence, {}))
    if not equivalence.ok:
        pytest.fail(f"EQUIVALENCE {equivalence.message}", pytrace=False)
    pooler, comparator = gate.case_closures(case, bench_config)
    benchmark.extra_info.update(gate.time_case(benchmark, pooler, comparator, bench_config))


def test_avg_pool2d(case, bench_config, benchmark):
    """The comparator's own absolute times (what ``--benchmark-compare-fail`` can watch on one machine)."""
    benchmark.group = case.group
    pooler, comparator = gate.case_closures(case, bench_config)
    timing = gate.time_case(benchmark, pooler, comparator, bench_config)
    for key in ("ratio", "paired_ratio", "median_ratio", "min_ratio"):  # a ratio to itself says nothing
        timing.pop(key, None)
    benchmark.extra_info.update(gate.extra_info(case, bench_config, None, timing))
