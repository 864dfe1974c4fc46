"""The whole gate behind ``poolbench compare``: run, confirm suspects, compare, save, report."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from .baselines import (DEFAULT_BASELINE_DIR, _machine_id, baseline_name, config_mismatch, find_baseline, merge_runs,
                        save_baseline)
from .cases import _split, bench_cases
from .comparison import DEFAULT_THRESHOLD, Comparison, compare
from .config import COMPARATOR, BenchConfig
from .report import _rel, render_markdown
from .results import BaselineError, SuiteRun, load_benchmarks
from .suite import project_root, run_suite

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
    poolers, tiers = _split(options.poolers), _split(options.tiers)
    return lambda key: (not poolers or key[0] in poolers) and (not tiers or key[1] in tiers)


def _read_baseline(path: Path | None, *, must_hold_cases: bool) -> tuple[dict, dict | None]:
    """The stored baseline's cases and raw document; unreadable, empty or foreign ones are a BaselineError."""
    if path is None:
        return {}, None
    try:
        cases = load_benchmarks(path)
    except ValueError as exc:
        raise BaselineError(f"cannot use the baseline: {exc}") from None
    if must_hold_cases and not cases:
        raise BaselineError(f"baseline {path} holds no poolbench benchmark cases (empty or foreign); restore it "
                            "from git or record one with `poolbench compare --save-baseline`")
    return cases, json.loads(path.read_text())


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
    mostly does not.  With ``save_baseline`` the
    run becomes the new baseline instead (refused if any test failed).
    """
    start = time.perf_counter()
    root = project_root(options.root)
    baseline_dir = Path(options.baseline_dir)
    baseline_dir = baseline_dir if baseline_dir.is_absolute() else root / baseline_dir
    baseline_path = find_baseline(baseline_dir, options.name)
    baseline, baseline_data = _read_baseline(baseline_path, must_hold_cases=not options.save_baseline)
    config = options.config
    messages: list[str] = []
    if not options.plugins:  # reject unknown names before minutes of running (plugins load in the suite)
        bench_cases(config, options.poolers, options.tiers)
    if not options.save_baseline:
        if baseline_path is None:
            raise ValueError(f"no baseline named {options.name!r} under {baseline_dir}; create one with "
                             "`poolbench compare --save-baseline` (and the same options)")
        mismatch = config_mismatch(baseline, config)
        if mismatch:
            raise ValueError(f"cannot compare with {baseline_path}: {mismatch}; pass the same options or refresh "
                             "the baseline with --save-baseline")

    compare_with = None
    if baseline_path is not None and baseline_path.parent.name == _machine_id() and not options.save_baseline:
        compare_with = baseline_path.stem.split("_", 1)[0]
    if options.compare_fail and not compare_with and not options.save_baseline:
        messages.append(f"note: --compare-fail not applied: the baseline is not from machine id {_machine_id()} "
                        "(absolute times only compare on the machine that recorded them)")
    suite = dict(poolers=options.poolers, tiers=options.tiers, root=root, plugins=options.plugins, env=options.env,
                 echo=options.echo)
    run = run_suite(config, storage=baseline_dir, compare_with=compare_with,
                    compare_fail=options.compare_fail if compare_with else (), **suite)
    runs = [run]
    if options.save_baseline:  # --repeat: the baseline is the per-case median over that many runs
        runs += [run_suite(config, **suite) for _ in range(max(1, options.repeat) - 1)]
        run = replace(run, data=merge_runs([r.data for r in runs]),
                      outcomes=[o for r in runs for o in r.outcomes],
                      returncode=max(runs, key=lambda r: r.returncode != 0).returncode)
    failed = False
    for failure in run.failures:
        messages.append(f"FAILED {failure.case_id}: {failure.message}")
        failed = True
    if run.returncode not in (0, 5) and not failed:
        lines = [line.strip() for line in run.output.splitlines()]
        absolute = [line for line in lines if "has failed" in line and "RegressionCheck" in line]
        if absolute:  # pytest-benchmark's --benchmark-compare-fail
            messages += [f"FAILED --benchmark-compare-fail (absolute time vs the baseline): {line}" for line in absolute]
        else:
            tail = [line for line in lines if "error" in line.lower() or "failed" in line.lower()]
            messages.append(f"FAILED pytest exited with status {run.returncode}" + (": " + " | ".join(tail[-5:]) if tail else ""))
        failed = True
    current = run.benchmarks
    if not any(result.ratio is not None for result in current.values()) and not failed:
        messages.append("FAILED the suite measured nothing (no pooler selected, or every case was skipped)")
        failed = True

    comparison, saved_path = None, None
    if options.save_baseline:
        if failed:
            messages.append("baseline NOT saved: the run had failures")
        else:
            partial = bool(_split(options.poolers) or _split(options.tiers)) and baseline_data is not None
            selected = _selected(options)

            def keep(bench: dict) -> bool:  # a partial refresh keeps the poolers it did not measure
                info = bench.get("extra_info") or {}
                if info.get("pooler") in (None, COMPARATOR):
                    return False
                return not selected((info.get("pooler"), info.get("tier"), info.get("layer"), info.get("pass")))

            saved_path = save_baseline(run.data, baseline_dir, options.name,
                                       previous=baseline_data if partial else None, keep=keep if partial else None)
            messages.append(f"baseline saved: {_rel(saved_path, root)}")
        if baseline and not config_mismatch(baseline, config):
            comparison = compare(baseline, current, options.threshold, case_threshold=options.case_threshold,
                                 selected=_selected(options))
    else:
        comparison = compare(baseline, current, options.threshold, case_threshold=options.case_threshold,
                             selected=_selected(options))
        merged = dict(current)
        for attempt in range(1, options.confirm + 1):
            suspects = comparison.suspects
            if not suspects:
                break
            # A fresh process, twice the time per case: interference (another process on the
            # core's caches, an unlucky memory layout) rarely repeats, a real slowdown does.
            nodeids = sorted({merged[key].fullname for key in suspects if key in merged})
            rerun = run_suite(replace(config, budget_s=2 * config.budget_s), select=nodeids, **suite)
            runs.append(rerun)
            for failure in rerun.failures:
                messages.append(f"FAILED (confirmation run {attempt}) {failure.case_id}: {failure.message}")
                failed = True
            for key, result in rerun.benchmarks.items():
                if key in merged and result.ratio is not None and merged[key].ratio is not None:
                    merged[key] = min(merged[key], result, key=lambda r: r.ratio)  # best of the runs
            before = len(comparison.regressions)
            comparison = compare(baseline, merged, options.threshold, case_threshold=options.case_threshold,
                                 selected=_selected(options))
            messages.append(f"confirmation run {attempt}: re-measured {len(nodeids)} suspect case(s); "
                            f"{before} regression(s) before, {len(comparison.regressions)} after (best of the runs)")
        messages += comparison.regressions
        if not any(row.change is not None for row in comparison.rows):
            messages.append(f"FAILED no case of this run could be compared with {baseline_path} (every case is new "
                            "or missing): the gate checked nothing")
            failed = True

    passed = not failed and (options.save_baseline or not comparison.regressions)
    duration = time.perf_counter() - start
    markdown = render_markdown(comparison, passed=passed, messages=messages, runs=runs, config=config,
                               baseline_path=baseline_path, saved_path=saved_path, root=root, duration_s=duration)
    report_path = None
    if options.report is not None:
        report_path = Path(options.report)
        report_path = report_path if report_path.is_absolute() else root / report_path
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(markdown)
        # The run's own pytest-benchmark JSON beside the report (a CI artifact; `pytest-benchmark compare` reads it).
        report_path.with_suffix(".json").write_text(json.dumps(run.data, indent=1) + "\n")
    return GateResult(passed, messages, comparison, runs, baseline_path, saved_path, report_path, markdown, duration)
