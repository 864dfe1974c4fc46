"""Options and fixtures of the pytest-benchmark regression suite (run by ``poolbench compare``).

The suite ships inside the package (so an installed poolbench can gate a
user's own plugin poolers); ``poolbench compare`` runs it.  Run it directly with::

    pytest -m bench "$(python -c 'import poolbench.benchmarks as b; print(b.__path__[0])')" --benchmark-enable \
        [--bench-poolers dpp_lite_sym] [--bench-resolution 112]

The ``--bench-*`` options set :class:`poolbench.gate.BenchConfig`; ``--device``
and ``--dtype`` are the same options as the test suite's (defined here too,
so the suite runs on its own).  ``--bench-outcomes PATH`` appends one JSON
line per test outcome, which is how the gate learns about equivalence
failures and skips.
"""
from __future__ import annotations

import json

import pytest
import torch

from poolbench import gate
from poolbench.measure import BenchConfig, torch_threads
from poolbench.benchmarks.fixtures import add_device_options, device  # noqa: F401  (fixture)

_DEFAULTS = BenchConfig()
_OPTIONS = {
    "batch": ("--bench-batch", int, "batch of the VGG-16 pooling shapes"),
    "resolution": ("--bench-resolution", int, "input resolution of VGG-16 (224 gives 224², 112², ... 14²)"),
    "threads": ("--bench-threads", int, "torch CPU threads while timing"),
    "budget_s": ("--bench-budget", float, "seconds of timing per case (pooler + avg_pool2d)"),
    "min_rounds": ("--bench-min-rounds", int, "fewest timed rounds per case"),
    "max_rounds": ("--bench-max-rounds", int, "most timed rounds per case"),
    "crop": ("--bench-crop", int, "spatial size at which slow reference tiers are checked"),
    "seed": ("--bench-seed", int, "seed of inputs and parameter perturbations"),
    "clock": ("--bench-clock", str, "auto|cpu|wall: cpu = process CPU time (CPU device, 1 thread)"),
}
_outcomes_path: str | None = None


def pytest_addoption(parser):
    add_device_options(parser)
    group = parser.getgroup("poolbench-bench", "poolbench benchmark suite (poolbench/benchmarks)")
    for field, (flag, kind, help_text) in _OPTIONS.items():
        default = getattr(_DEFAULTS, field)
        group.addoption(flag, type=kind, default=default, help=f"{help_text} (default {default})")
    group.addoption("--bench-poolers", default=None, help="comma-separated poolers to benchmark (default: all)")
    group.addoption("--bench-tiers", default=None, help="comma-separated tiers to benchmark (default: all but reference)")
    group.addoption("--bench-outcomes", default=None, help="append one JSON line per test outcome to this file")


def bench_config_from(config) -> BenchConfig:
    """The :class:`BenchConfig` the command line asks for."""
    values = {field: config.getoption(flag, getattr(_DEFAULTS, field)) for field, (flag, _, _) in _OPTIONS.items()}
    return BenchConfig(device=config.getoption("--device", "cpu"), dtype=config.getoption("--dtype", "float32"), **values)


def bench_selection(config) -> tuple[str | None, str | None]:
    return config.getoption("--bench-poolers", None), config.getoption("--bench-tiers", None)


def pytest_configure(config):
    config.addinivalue_line("markers", "bench: pytest-benchmark regression suite (run by `poolbench compare`)")
    global _outcomes_path
    _outcomes_path = config.getoption("--bench-outcomes", None)


@pytest.fixture(scope="session")
def bench_config(request, device) -> BenchConfig:
    config = bench_config_from(request.config)
    with torch_threads(config.threads if device.type == "cpu" else None):
        yield config


_CASES: dict[str, gate.BenchCase] = {}


def pytest_generate_tests(metafunc):
    """``test_pooler``: every registered pooler × tier × layer × pass; ``test_avg_pool2d``: the comparator."""
    if "case_id" not in metafunc.fixturenames:
        return
    config = bench_config_from(metafunc.config)
    if metafunc.function.__name__ == "test_pooler":
        cases = gate.bench_cases(config, *bench_selection(metafunc.config))
    else:
        cases = gate.comparator_cases(config)
    _CASES.update((case.id, case) for case in cases)
    # Parametrized by id (a string), so pytest-benchmark's JSON "params" stays readable.
    metafunc.parametrize("case_id", [
        pytest.param(case.id, id=case.id, marks=[pytest.mark.skip(reason=case.skip_reason)] if case.skip_reason else [])
        for case in cases
    ])


@pytest.fixture
def case(case_id) -> gate.BenchCase:
    return _CASES[case_id]


def pytest_runtest_logreport(report):
    if not _outcomes_path:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed) or (report.when == "teardown" and report.failed):
        outcome = report.outcome if report.when == "call" or report.skipped else "error"
        with open(_outcomes_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"nodeid": report.nodeid, "outcome": outcome, "message": _message(report)}) + "\n")


def pytest_collectreport(report):
    if _outcomes_path and report.failed:  # e.g. an unknown --bench-poolers name
        with open(_outcomes_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"nodeid": report.nodeid or "collection", "outcome": "error",
                                     "message": _message(report)}) + "\n")


def _message(report) -> str:
    if report.passed:
        return ""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(longrepr)
    return " ".join(text.removeprefix("Failed: ").split())[:1000]
