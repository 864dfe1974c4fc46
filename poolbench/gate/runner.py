"""The time gate behind ``poolbench compare``: the time meter plugged into the gate shell.

:func:`run_gate` is :func:`poolbench.gate.shell.run_gate_with` with
:class:`TimeMeter`: read the baseline (:func:`load_baseline`), run the
pytest-benchmark suite (:func:`run_once`, plus ``--repeat`` runs when
saving), re-measure suspected regressions (:func:`confirm_suspects`), then
the shell decides, saves and writes the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from .baselines import machine_id, baseline_name, config_mismatch, find_baseline, merge_runs, save_baseline
from ..measure.cases import split_names, bench_cases
from .comparison import Comparison, compare
from ..measure.config import COMPARATOR, BenchConfig
from .report import render_markdown
from .results import RECORD_COMMAND, BaselineError, SuiteRun, load_benchmarks, read_json
from .shell import GateResult, Measurement, Messages, ShellOptions, StoredBaseline, run_gate_with
from .suite import run_suite

__all__ = ["DEFAULT_REPORT", "GateOptions", "GateResult", "StoredBaseline", "TimeMeter", "confirm_suspects",
           "load_baseline", "run_gate", "run_once"]

DEFAULT_REPORT = Path("reports") / "bench_compare.md"


@dataclass
class GateOptions(ShellOptions):
    """Everything ``poolbench compare`` (time) controls; see :func:`run_gate`."""

    config: BenchConfig = field(default_factory=BenchConfig)
    baseline_name: str | None = None
    report: Path | None = DEFAULT_REPORT
    confirm: int = 2
    repeat: int = 1
    compare_fail: Sequence[str] = ()

    @property
    def name(self) -> str:
        return self.baseline_name or baseline_name(self.config)


def run_gate(options: GateOptions) -> GateResult:
    """Run the suite, compare its ratios with the stored baseline, write the report.

    The gate fails when a test fails (an equivalence mismatch, a crash, a
    plugin that does not load), when pytest-benchmark's own
    ``--benchmark-compare-fail`` fails, on a ratio regression (see
    :func:`poolbench.gate.compare`), or when no case could be compared.
    Suspect cases are then re-measured in up to ``confirm`` fresh processes
    (default 2) with twice the time budget, and the smallest ratio seen is
    kept: a regression must show in every run.  A real slowdown repeats; the
    interference of a shared machine (another process on the caches or on the
    core's sibling, an unlucky memory layout) mostly does not.  With
    ``save_baseline`` the run becomes the new baseline instead (refused if
    any test failed).  A baseline that cannot be compared with is
    :class:`BaselineError`.
    """
    return run_gate_with(TimeMeter(), options)


class TimeMeter:
    """CPU-time ratios to ``avg_pool2d`` from the pytest-benchmark suite (:mod:`poolbench.benchmarks`)."""

    title = "Benchmark gate"
    quantity = "time"
    record_command = RECORD_COMMAND
    missing_fails = False  # a vanished pooler fails its test in the suite; a deselected one is not missing

    def prepare(self, options: GateOptions) -> StoredBaseline:
        return load_baseline(options)

    def measure(self, options: GateOptions, baseline: StoredBaseline) -> Measurement:
        run, runs, notes, failures = run_once(options, baseline)
        return Measurement(run.benchmarks, runs, failures=failures, notes=notes, artifact=run.data)

    def locate(self, options, measurement: Measurement, baseline: StoredBaseline) -> StoredBaseline:
        return baseline

    def confirm(self, options: GateOptions, baseline: StoredBaseline, comparison: Comparison,
                measurement: Measurement, messages: Messages) -> Comparison:
        return confirm_suspects(options, baseline, comparison, measurement, messages)

    def save(self, options: GateOptions, measurement: Measurement, baseline: StoredBaseline) -> Path:
        """Store the run as the baseline (a partial refresh keeps the poolers it did not measure)."""
        partial = bool(split_names(options.poolers) or split_names(options.tiers)) and baseline.data is not None

        def keep(bench: dict) -> bool:
            info = bench.get("extra_info") or {}
            if info.get("pooler") in (None, COMPARATOR):
                return False
            return not options.selected((info.get("pooler"), info.get("tier"), info.get("layer"), info.get("pass")))

        return save_baseline(measurement.artifact, options.resolve(options.baseline_dir), options.name,
                             previous=baseline.data if partial else None, keep=keep if partial else None)

    def render(self, options: GateOptions, result: GateResult, measurement: Measurement) -> str:
        return render_markdown(result.comparison, passed=result.passed, messages=result.messages, runs=result.runs,
                               config=options.config, baseline_path=result.baseline_path,
                               saved_path=result.saved_path, root=options.workdir, duration_s=result.duration_s)


def load_baseline(options: GateOptions) -> StoredBaseline:
    """The stored baseline named by ``options``; :class:`BaselineError` if a comparison needs one that is missing,
    unreadable or measured with other settings.  ``--save-baseline`` over an unreadable one records a fresh
    baseline (the next number) instead of refusing: that is what the refusal tells the user to do."""
    directory = options.resolve(options.baseline_dir)
    path = find_baseline(directory, options.name)
    try:
        baseline = _read_baseline(path, must_hold_cases=not options.save_baseline)
    except BaselineError:
        if not options.save_baseline:
            raise
        baseline = StoredBaseline(None)  # recording a fresh baseline is the cure: it gets the next number
        path = None
    if not options.plugins:  # reject unknown names before minutes of running (plugins load in the suite)
        bench_cases(options.config, options.poolers, options.tiers)
    mismatch = config_mismatch(baseline.results, options.config) if path is not None else None
    baseline.comparable = mismatch is None
    if not options.save_baseline:
        if path is None:
            raise BaselineError(f"no baseline named {options.name!r} under {directory}; create one with "
                                f"`{RECORD_COMMAND}` (and the same options)")
        if mismatch:
            raise BaselineError(f"cannot compare with {path}: {mismatch}; pass the same options or refresh "
                                "the baseline with --save-baseline")
    return baseline


def _read_baseline(path: Path | None, *, must_hold_cases: bool) -> StoredBaseline:
    """The stored baseline; an unreadable, empty, crafted or foreign one is a BaselineError (the gate fails, exit 1)."""
    if path is None:
        return StoredBaseline(None, None, {})
    data = read_json(path)  # the validating loader: its refusals name the file and the record command
    try:
        cases = load_benchmarks(data, source=str(path), baseline=True)
    except ValueError as exc:
        raise BaselineError(f"cannot use the baseline: {exc}; restore it from git or record a fresh one with "
                            f"`{RECORD_COMMAND}`") from None
    if must_hold_cases and not any(case.ratio is not None for case in cases.values()):
        raise BaselineError(f"baseline {path} holds no poolbench benchmark cases (empty or foreign); restore it "
                            f"from git or record one with `{RECORD_COMMAND}`")
    return StoredBaseline(path, data, cases)


def run_once(options: GateOptions, baseline: StoredBaseline) -> tuple[SuiteRun, list[SuiteRun], list[str], list[str]]:
    """(the run to judge, every suite run made, notes, failure messages); with ``--repeat`` the per-case median run."""
    notes: list[str] = []
    compare_with = None
    if baseline.path is not None and baseline.path.parent.name == machine_id() and not options.save_baseline:
        compare_with = baseline.path.stem.split("_", 1)[0]
    if options.compare_fail and not compare_with and not options.save_baseline:
        notes.append(f"note: --compare-fail not applied: the baseline is not from machine id {machine_id()} "
                     "(absolute times only compare on the machine that recorded them)")
    suite = _suite_kwargs(options)
    run = run_suite(options.config, storage=options.resolve(options.baseline_dir), compare_with=compare_with,
                    compare_fail=options.compare_fail if compare_with else (), **suite)
    runs = [run]
    if options.save_baseline:  # --repeat: the baseline is the per-case median over that many runs
        runs += [run_suite(options.config, **suite) for _ in range(max(1, options.repeat) - 1)]
        run = replace(run, data=merge_runs([r.data for r in runs]), outcomes=[o for r in runs for o in r.outcomes],
                      returncode=max(runs, key=lambda r: r.returncode != 0).returncode)
    return run, runs, notes, _failure_messages(run)


def _suite_kwargs(options: GateOptions) -> dict:
    return dict(poolers=options.poolers, tiers=options.tiers, cwd=options.workdir, plugins=options.plugins,
                env=options.env, echo=options.echo)


def _failure_messages(run: SuiteRun) -> list[str]:
    """Why a suite run failed: failed tests, pytest-benchmark's compare-fail, a crash, or nothing measured."""
    messages = [f"FAILED {failure.case_id}: {failure.message}" for failure in run.failures]
    if run.returncode not in (0, 5) and not messages:
        lines = [line.strip() for line in run.output.splitlines()]
        absolute = [line for line in lines if "has failed" in line and "RegressionCheck" in line]
        if absolute:  # pytest-benchmark's --benchmark-compare-fail
            messages += [f"FAILED --benchmark-compare-fail (absolute time vs the baseline): {line}" for line in absolute]
        else:
            tail = [line for line in lines if "error" in line.lower() or "failed" in line.lower()]
            messages.append(f"FAILED pytest exited with status {run.returncode}" + (": " + " | ".join(tail[-5:]) if tail else ""))
    if not messages and not any(result.ratio is not None for result in run.benchmarks.values()):
        messages.append("FAILED the suite measured nothing (no pooler selected, or every case was skipped)")
    return messages


def confirm_suspects(options: GateOptions, baseline: StoredBaseline, comparison: Comparison,
                     measurement: Measurement, messages: Messages) -> Comparison:
    """Re-measure suspected regressions in fresh processes (best ratio of the runs is kept); the final comparison.

    A fresh process with twice the time per case: interference (another
    process on the core's caches, an unlucky memory layout) rarely repeats,
    a real slowdown does.  The reruns join ``measurement.runs``.
    """
    merged = dict(measurement.current)
    for attempt in range(1, options.confirm + 1):
        if not comparison.suspects:
            break
        nodeids = sorted({merged[key].fullname for key in comparison.suspects if key in merged})
        rerun = run_suite(replace(options.config, budget_s=2 * options.config.budget_s), select=nodeids,
                          **_suite_kwargs(options))
        measurement.runs.append(rerun)
        messages.fail(*(f"FAILED (confirmation run {attempt}) {f.case_id}: {f.message}" for f in rerun.failures))
        for key, result in rerun.benchmarks.items():
            if key in merged and result.ratio is not None and merged[key].ratio is not None:
                merged[key] = min(merged[key], result, key=lambda r: r.ratio)  # best of the runs
        before = len(comparison.regressions)
        comparison = compare_like(comparison, baseline.results, merged, options)
        messages.note(f"confirmation run {attempt}: re-measured {len(nodeids)} suspect case(s); "
                      f"{before} regression(s) before, {len(comparison.regressions)} after (best of the runs)")
    return comparison


def compare_like(comparison: Comparison, baseline: dict, current: dict, options: GateOptions) -> Comparison:
    """``current`` compared with ``baseline`` under the same thresholds and selection as ``comparison``."""
    return compare(baseline, current, comparison.threshold, case_threshold=comparison.case_threshold,
                   selected=options.selected, quantity=comparison.quantity)
