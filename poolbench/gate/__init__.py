"""The benchmark regression gate: every pooler × tier, timed as a ratio to ``avg_pool2d``.

Why ratios: absolute times move with the machine, its load and its thread
count; the time of a pooler divided by the time of ATen's ``avg_pool2d`` on
the same input, measured in the same session, survives a noisy or different
machine far better.  The gate stores these ratios (pytest-benchmark JSON,
``extra_info["ratio"]``) as a baseline in the repository and fails when a
ratio grows by more than a threshold (default 10%).

How a ratio is measured (``time_case``): one ``benchmark.pedantic`` round is a
single pooler call, and before each round the ``setup`` hook times one
``avg_pool2d`` call on the same input and pass; the ratio is the median of the
pooler rounds over the median of the interleaved comparator calls.  A burst of
load from another process slows both sides alike, so it cancels.

Equivalence: before a tier is timed, its output (and, when differentiable,
the gradients of input and parameters) must match the pooler's reference
by :mod:`poolbench.verify.equivalence` (the rules ``poolbench check`` uses); a mismatch fails the test and the gate.

The pieces, one job per module:

* :mod:`poolbench.measure.config` – :class:`BenchConfig` and the shared constants (comparator, passes,
  VGG-16 geometry);
* :mod:`poolbench.measure.cases` – :func:`bench_cases`, the registry-driven case list (pooler × tier ×
  VGG-16 layer × pass); new poolers and tiers join automatically;
* :mod:`poolbench.measure.closures` – inputs, modules and :func:`pass_closure` / :func:`case_closures`;
* :mod:`.measure` – :func:`time_case`, the interleaved ratio measurement;
* :mod:`.equivalence` – :func:`equivalence_at`, the equivalence contract at a benchmark shape;
* :mod:`.results` – :func:`load_benchmarks`, :func:`extra_info`, a suite run's outcomes;
* :mod:`.suite` – :func:`run_suite` runs the packaged suite :mod:`poolbench.benchmarks` in a subprocess,
  collects its JSON;
* :mod:`.baseline_file` – :func:`read_baseline_json`, the one validating loader both gates read baselines
  through (regular files of sane size and nesting, finite numbers), :class:`BaselineError`;
* :mod:`.baselines` – saving (pytest-benchmark's own ``FileStorage``), finding, merging and naming time baselines;
* :mod:`.comparison` – :func:`compare`, baseline ratios against current ratios;
* :mod:`.report` – :func:`render_markdown`, the markdown summary;
* :mod:`.shell` – :func:`run_gate_with`, the gate shell both gates share (options, selection, verdict and
  messages, report writing, subprocess streaming) with a :class:`Meter` plugged in;
* :mod:`.runner` – :func:`run_gate`, the time gate behind ``poolbench compare``: the time meter
  (:func:`load_baseline`, :func:`run_once`, :func:`confirm_suspects`) in the shell;
* :mod:`.instruction_gate` – :func:`run_instruction_gate`, the instruction meter (callgrind) in the same shell.

The names are re-exported here, so ``from poolbench import gate; gate.run_gate(...)`` is the API.
"""
from __future__ import annotations

from .baselines import (DEFAULT_BASELINE_DIR, baseline_name, config_mismatch, find_baseline, merge_runs,
                        save_baseline)
from ..measure.closures import build_module, case_closures, comparator, make_input, pass_closure
from ..measure.cases import BenchCase, bench_cases, comparator_cases, group_name
from .comparison import (DEFAULT_THRESHOLD, Comparison, GroupRow, CaseChange, compare, group_regression_message,
                         regression_message)
from ..measure.config import COMPARATOR, KERNEL_SIZE, PADDING, PASSES, STRIDE, BenchConfig
from .equivalence import Equivalence, clear_equivalence_cache, equivalence_at
from .measure import time_case
from .report import render_markdown
from .baseline_file import BaselineError, read_baseline_json
from .results import CaseResult, Outcome, SuiteRun, extra_info, load_benchmarks
from .runner import DEFAULT_REPORT, GateOptions, TimeMeter, confirm_suspects, load_baseline, run_gate, run_once
from .shell import GateResult, Measurement, Meter, ShellOptions, StoredBaseline, run_gate_with, write_report
from .suite import SUITE_DIR, SUITE_ENV, SUITE_FILE, run_suite, suite_arguments, suite_node

__all__ = [
    "COMPARATOR",
    "PASSES",
    "BenchCase",
    "BenchConfig",
    "CaseResult",
    "Comparison",
    "Equivalence",
    "GroupRow",
    "GateOptions",
    "GateResult",
    "Meter",
    "ShellOptions",
    "TimeMeter",
    "read_baseline_json",
    "run_gate_with",
    "SuiteRun",
    "bench_cases",
    "equivalence_at",
    "compare",
    "baseline_name",
    "find_baseline",
    "BaselineError",
    "load_benchmarks",
    "merge_runs",
    "pass_closure",
    "render_markdown",
    "run_gate",
    "run_suite",
    "save_baseline",
    "time_case",
]
