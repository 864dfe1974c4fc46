"""The whole gate behind ``poolbench compare``: load the baseline, run, confirm suspects, save or report.

:func:`run_gate` is four steps, each its own function: :func:`load_baseline`,
:func:`run_once` (the suite, plus ``--repeat`` runs when saving),
:func:`confirm_suspects` (re-measure suspected regressions) and
:func:`write_report`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from .baselines import (DEFAULT_BASELINE_DIR, machine_id, baseline_name, config_mismatch, find_baseline, merge_runs,
                        save_baseline)
from ..measure.cases import split_names, bench_cases
from .comparison import DEFAULT_THRESHOLD, Comparison, compare
from ..measure.config import COMPARATOR, BenchConfig
from .report import relative_path, render_markdown
from .results import BaselineError, SuiteRun, load_benchmarks, read_json
from .suite import run_suite

DEFAULT_REPORT = Path("reports") / "bench_compare.md"


@dataclass
class GateOptions:
    """Everything ``poolbench compare`` controls; see :func:`run_gate`."""

    config: BenchConfig = field(default_factory=BenchConfig)
    threshold: float = DEFAULT_THRESHOLD
    case_threshold: float | None = None
    poolers: Sequence[str] | None = None
    tiers: Sequence[str] | None = None
    save_baseline: bool = False
    baseline_dir: Path = DEFAULT_BASELINE_DIR
    baseline_name: str | None = None
    report: Path | None = DEFAULT_REPORT
    confirm: int = 2
    repeat: int = 1
    compare_fail: Sequence[str] = ()
    plugins: Sequence[str] = ()
    env: dict | None = None
    root: Path | None = None
    echo: bool = True

    @property
    def name(self) -> str:
        return self.baseline_name or baseline_name(self.config)

    @property
    def workdir(self) -> Path:
        """Where the suite runs and relative paths point: ``root``, by default the current directory."""
        return Path(self.root or Path.cwd()).resolve()

    def resolve(self, path: str | Path) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.workdir / path


@dataclass
class StoredBaseline:
    """The baseline a run is compared with (``path`` None when there is none yet)."""

    path: Path | None
    data: dict | None
    results: dict


@dataclass
class GateResult:
    """What the gate decided, and why."""

    passed: bool
    messages: list[str]
    comparison: Comparison | None
    runs: list[SuiteRun]
    baseline_path: Path | None
    saved_path: Path | None
    report_path: Path | None
    markdown: str
    duration_s: float


def _selected(options: GateOptions) -> Callable[[tuple], bool]:
    poolers, tiers = split_names(options.poolers), split_names(options.tiers)
    return lambda key: (not poolers or key[0] in poolers) and (not tiers or key[1] in tiers)


def _suite_kwargs(options: GateOptions) -> dict:
    return dict(poolers=options.poolers, tiers=options.tiers, cwd=options.workdir, plugins=options.plugins,
                env=options.env, echo=options.echo)


def _compare(options: GateOptions, baseline: dict, current: dict) -> Comparison:
    return compare(baseline, current, options.threshold, case_threshold=options.case_threshold,
                   selected=_selected(options))


def run_gate(options: GateOptions) -> GateResult:
    """Run the suite, compare its ratios with the stored baseline, write the report.

    The gate fails when a test fails (an equivalence mismatch, a crash, a
    plugin that does not load), when pytest-benchmark's own
    ``--benchmark-compare-fail`` fails, or on a ratio regression (see
    :func:`compare`).  Suspect cases are then re-measured in up to
    ``confirm`` fresh processes (default 2) with twice the time budget, and
    the smallest ratio seen is kept: a regression must show in every run.  A
    real slowdown repeats; the interference of a shared machine (another
    process on the caches or on the core's sibling, an unlucky memory layout)
    mostly does not.  With ``save_baseline`` the run becomes the new baseline
    instead (refused if any test failed).
    """
    start = time.perf_counter()
    baseline = load_baseline(options)
    run, runs, messages = run_once(options, baseline)
    failed = any(message.startswith("FAILED") for message in messages)
    comparison, saved_path = None, None
    if options.save_baseline:
        saved_path = _save(options, run, baseline, failed, messages)
        if baseline.results and not config_mismatch(baseline.results, options.config):
            comparison = _compare(options, baseline.results, run.benchmarks)
    else:
        comparison, reruns, confirm_messages = confirm_suspects(options, baseline, run.benchmarks)
        runs += reruns
        failed = failed or any(m.startswith("FAILED") for m in confirm_messages)
        messages += confirm_messages + comparison.regressions
        if not any(change.change is not None for change in comparison.rows):
            messages.append(f"FAILED no case of this run could be compared with {baseline.path} (every case is "
                            "new or missing): the gate checked nothing")
            failed = True
    passed = not failed and (options.save_baseline or not comparison.regressions)
    result = GateResult(passed, messages, comparison, runs, baseline.path, saved_path, None, "",
                        time.perf_counter() - start)
    return write_report(options, result, run)


def load_baseline(options: GateOptions) -> StoredBaseline:
    """The stored baseline named by ``options``; ``ValueError`` if a comparison needs one that is missing or foreign."""
    directory = options.resolve(options.baseline_dir)
    path = find_baseline(directory, options.name)
    baseline = _read_baseline(path, must_hold_cases=not options.save_baseline)
    if not options.plugins:  # reject unknown names before minutes of running (plugins load in the suite)
        bench_cases(options.config, options.poolers, options.tiers)
    if not options.save_baseline:
        if path is None:
            raise ValueError(f"no baseline named {options.name!r} under {directory}; create one with "
                             "`poolbench compare --save-baseline` (and the same options)")
        mismatch = config_mismatch(baseline.results, options.config)
        if mismatch:
            raise ValueError(f"cannot compare with {path}: {mismatch}; pass the same options or refresh "
                             "the baseline with --save-baseline")
    return baseline


def _read_baseline(path: Path | None, *, must_hold_cases: bool) -> StoredBaseline:
    """The stored baseline; an unreadable, empty or foreign one is a BaselineError (the gate fails, exit 1)."""
    if path is None:
        return StoredBaseline(None, None, {})
    try:
        data = read_json(path)
        cases = load_benchmarks(data, source=str(path))
    except ValueError as exc:
        raise BaselineError(f"cannot use the baseline: {exc}") from None
    if must_hold_cases and not cases:
        raise BaselineError(f"baseline {path} holds no poolbench benchmark cases (empty or foreign); restore it "
                            "from git or record one with `poolbench compare --save-baseline`")
    return StoredBaseline(path, data, cases)


def run_once(options: GateOptions, baseline: StoredBaseline) -> tuple[SuiteRun, list[SuiteRun], list[str]]:
    """(the run to judge, every suite run made, failure messages); with ``--repeat`` the per-case median run."""
    messages: list[str] = []
    compare_with = None
    if baseline.path is not None and baseline.path.parent.name == machine_id() and not options.save_baseline:
        compare_with = baseline.path.stem.split("_", 1)[0]
    if options.compare_fail and not compare_with and not options.save_baseline:
        messages.append(f"note: --compare-fail not applied: the baseline is not from machine id {machine_id()} "
                        "(absolute times only compare on the machine that recorded them)")
    suite = _suite_kwargs(options)
    run = run_suite(options.config, storage=options.resolve(options.baseline_dir), compare_with=compare_with,
                    compare_fail=options.compare_fail if compare_with else (), **suite)
    runs = [run]
    if options.save_baseline:  # --repeat: the baseline is the per-case median over that many runs
        runs += [run_suite(options.config, **suite) for _ in range(max(1, options.repeat) - 1)]
        run = replace(run, data=merge_runs([r.data for r in runs]), outcomes=[o for r in runs for o in r.outcomes],
                      returncode=max(runs, key=lambda r: r.returncode != 0).returncode)
    return run, runs, messages + _failure_messages(run)


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


def _save(options: GateOptions, run: SuiteRun, baseline: StoredBaseline, failed: bool, messages: list[str]) -> Path | None:
    """Store ``run`` as the baseline (a partial refresh keeps the poolers it did not measure)."""
    if failed:
        messages.append("baseline NOT saved: the run had failures")
        return None
    partial = bool(split_names(options.poolers) or split_names(options.tiers)) and baseline.data is not None
    selected = _selected(options)

    def keep(bench: dict) -> bool:
        info = bench.get("extra_info") or {}
        if info.get("pooler") in (None, COMPARATOR):
            return False
        return not selected((info.get("pooler"), info.get("tier"), info.get("layer"), info.get("pass")))

    path = save_baseline(run.data, options.resolve(options.baseline_dir), options.name,
                         previous=baseline.data if partial else None, keep=keep if partial else None)
    messages.append(f"baseline saved: {relative_path(path, options.workdir)}")
    return path


def confirm_suspects(options: GateOptions, baseline: StoredBaseline,
                     current: dict) -> tuple[Comparison, list[SuiteRun], list[str]]:
    """Compare, then re-measure suspected regressions in fresh processes (best ratio of the runs is kept).

    A fresh process with twice the time per case: interference (another
    process on the core's caches, an unlucky memory layout) rarely repeats,
    a real slowdown does.
    """
    comparison = _compare(options, baseline.results, current)
    merged, runs, messages = dict(current), [], []
    for attempt in range(1, options.confirm + 1):
        if not comparison.suspects:
            break
        nodeids = sorted({merged[key].fullname for key in comparison.suspects if key in merged})
        rerun = run_suite(replace(options.config, budget_s=2 * options.config.budget_s), select=nodeids,
                          **_suite_kwargs(options))
        runs.append(rerun)
        messages += [f"FAILED (confirmation run {attempt}) {f.case_id}: {f.message}" for f in rerun.failures]
        for key, result in rerun.benchmarks.items():
            if key in merged and result.ratio is not None and merged[key].ratio is not None:
                merged[key] = min(merged[key], result, key=lambda r: r.ratio)  # best of the runs
        before = len(comparison.regressions)
        comparison = _compare(options, baseline.results, merged)
        messages.append(f"confirmation run {attempt}: re-measured {len(nodeids)} suspect case(s); "
                        f"{before} regression(s) before, {len(comparison.regressions)} after (best of the runs)")
    return comparison, runs, messages


def write_report(options: GateOptions, result: GateResult, run: SuiteRun) -> GateResult:
    """Render the markdown summary into ``result`` and write it (with the run's JSON beside it) if asked."""
    result.markdown = render_markdown(result.comparison, passed=result.passed, messages=result.messages,
                                      runs=result.runs, config=options.config, baseline_path=result.baseline_path,
                                      saved_path=result.saved_path, root=options.workdir, duration_s=result.duration_s)
    if options.report is not None:
        result.report_path = options.resolve(options.report)
        result.report_path.parent.mkdir(parents=True, exist_ok=True)
        result.report_path.write_text(result.markdown)
        # The run's own pytest-benchmark JSON beside the report (a CI artifact; `pytest-benchmark compare` reads it).
        result.report_path.with_suffix(".json").write_text(json.dumps(run.data, indent=1) + "\n")
    return result
