"""The instruction-count regression gate behind ``poolbench compare --metric instructions``.

Counts every pooler × tier (:func:`poolbench.gate.instructions.count_instructions`),
compares each ratio to ``avg_pool2d`` with the stored baseline for this
machine, torch version and CPU capability
(:mod:`poolbench.gate.instruction_baseline`) and decides:

* fail when a pooler × tier × pass ratio (geometric mean over the five
  layers) grows by more than 3%, or one layer's ratio by more than 10%;
  two unchanged runs agree far closer than that (the counts are exact up to
  allocator and hash-table paths), so these thresholds only need headroom
  for intended small changes, not for noise;
* fail when a case in the baseline is no longer measured (a pooler or tier
  vanished or now crashes), a case raises, or a plugin does not import;
* a new pooler or tier is reported as new and passes.

The thresholds sit on the same per-case / per-group comparison as the time
gate (:func:`poolbench.gate.compare`), so both gates agree on what a group is.
"""
from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..measure import bench_cases
from ..measure.cases import split_names
from .comparison import CaseChange, Comparison, GroupRow, compare
from ..measure import COMPARATOR
from .instruction_baseline import (RECORD_COMMAND, BaselineError, baseline_key, baseline_path, candidate_baselines,
                                   load_baseline, save_baseline)
from .instructions import INSTRUCTION_CONFIG, InstructionRun, count_instructions

__all__ = ["CASE_THRESHOLD", "GROUP_THRESHOLD", "InstructionGateOptions", "InstructionGateResult",
           "judge", "render_summary", "run_instruction_gate"]

GROUP_THRESHOLD = 0.03
CASE_THRESHOLD = 0.10
DEFAULT_REPORT = Path("reports") / "instruction_compare.md"
DEFAULT_BASELINE_DIR = Path("benchmarks") / "baselines"


@dataclass
class InstructionGateOptions:
    """What ``poolbench compare --metric instructions`` controls; see :func:`run_instruction_gate`."""

    poolers: Sequence[str] | None = None
    tiers: Sequence[str] | None = None
    save_baseline: bool = False
    baseline_dir: Path = DEFAULT_BASELINE_DIR
    report: Path | None = DEFAULT_REPORT
    threshold: float = GROUP_THRESHOLD
    case_threshold: float = CASE_THRESHOLD
    plugins: Sequence[str] = ()
    env: dict | None = None
    echo: bool = True

    def selected(self, key: tuple) -> bool:
        poolers, tiers = split_names(self.poolers), split_names(self.tiers)
        return (not poolers or key[0] in poolers) and (not tiers or key[1] in tiers)


@dataclass
class InstructionGateResult:
    passed: bool
    messages: list[str]
    comparison: Comparison | None
    run: InstructionRun | None
    baseline_path: Path | None
    saved_path: Path | None
    report_path: Path | None
    markdown: str
    duration_s: float


def _group_message(group: GroupRow, threshold: float) -> str:
    layers = ", ".join(f"layer{r.key[2]} {r.baseline_ratio:.3f}x -> {r.current_ratio:.3f}x ({r.change:+.1%})"
                       for r in group.rows)
    return (f"REGRESSION {group.pooler}[{group.tier}] {group.pass_}: instruction ratio to {COMPARATOR} up "
            f"{group.change:+.1%} (geometric mean over {len(group.rows)} layers; threshold +{threshold:.0%}): {layers}")


def _case_message(row: CaseChange, case_threshold: float) -> str:
    return (f"REGRESSION {row.label}: instruction ratio to {COMPARATOR} {row.baseline_ratio:.3f}x -> "
            f"{row.current_ratio:.3f}x ({row.change:+.1%}; single-layer threshold +{case_threshold:.0%})")


def judge(baseline: dict, run: InstructionRun, *, threshold: float = GROUP_THRESHOLD,
          case_threshold: float = CASE_THRESHOLD, selected=None) -> tuple[Comparison, list[str]]:
    """The comparison and the failure messages (empty: the gate passes).

    ``selected(key)`` limits which baseline cases must be present
    (``--poolers``/``--tiers``); a selected baseline case that the run did not
    count — vanished, or failed — is a failure.
    """
    comparison = compare(baseline, run.counts, threshold, case_threshold=case_threshold, selected=selected)
    failed_labels = {label for label, _ in run.errors}
    messages = list(run.failures)
    messages += [_group_message(g, threshold) for g in comparison.regressed_groups]
    messages += [_case_message(r, case_threshold) for r in comparison.by_status("regressed")]
    messages += [f"VANISHED {r.label}: in the baseline (ratio {r.baseline_ratio:.3f}x) but not measured in this run"
                 for r in comparison.by_status("missing") if _short_label(r.key) not in failed_labels]
    return comparison, messages


def _short_label(key: tuple) -> str:
    pooler, tier, layer, pass_ = key
    return f"{pooler}[{tier}] layer{layer} {pass_}"


def render_summary(comparison: Comparison | None, run: InstructionRun | None, *, passed: bool,
                   messages: Sequence[str], baseline: Path | None, saved: Path | None) -> str:
    """Markdown: verdict, messages, per pooler × tier × pass changes, then every case's ratios."""
    config = INSTRUCTION_CONFIG
    lines = [f"# Instruction-count gate: {'PASS' if passed else 'FAIL'}", "",
             f"- {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; callgrind instruction counts, one call per case "
             f"after warm-up, VGG-16 pooling shapes at batch {config.batch} and {config.resolution}², "
             f"{config.threads} thread, each as a ratio to `{COMPARATOR}` on the same input and pass"]
    if run is not None:
        env = run.environment
        lines.append(f"- torch {env.get('torch')}, CPU capability under valgrind {env.get('cpu_capability')}; "
                     f"valgrind process {run.wall_s:.0f} s wall, {run.cpu_s:.0f} s CPU; "
                     f"{len(run.counts)} cases counted, {len(run.skipped)} skipped")
        reasons: dict[str, int] = {}
        for _, reason in run.skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"- skipped: {n} × {reason}" for reason, n in sorted(reasons.items())]
    if comparison is not None:
        lines.append(f"- fails when a pooler × tier × pass ratio (geometric mean over the layers) grows by more than "
                     f"{comparison.threshold:.0%}, or one layer's by more than {comparison.case_threshold:.0%}")
    lines += [f"- baseline: `{baseline}`" + (f"; saved: `{saved}`" if saved else ""), ""]
    if messages:
        lines += ["## Messages", "", *(f"- {m}" for m in messages), ""]
    if comparison is None:
        return "\n".join(lines)
    lines += ["## Per pooler × tier × pass", "", "| pooler | tier | pass | change (geo. mean) | status |",
              "|---|---|---|---|---|"]
    lines += [f"| {g.pooler} | {g.tier} | {g.pass_} | {g.change:+.2%} | {g.status} |"
              for g in sorted(comparison.groups, key=lambda g: -g.change)]
    lines += ["", "## Every case", "", "| pooler | tier | pass | layer | baseline ratio | current ratio | change | status |",
              "|---|---|---|---|---|---|---|---|"]
    for r in comparison.rows:
        pooler, tier, layer, pass_ = r.key
        base = "–" if r.baseline_ratio is None else f"{r.baseline_ratio:.4f}"
        cur = "–" if r.current_ratio is None else f"{r.current_ratio:.4f}"
        change = "–" if r.change is None else f"{r.change:+.2%}"
        lines.append(f"| {pooler} | {tier} | {pass_} | {layer} | {base} | {cur} | {change} | {r.status} |")
    return "\n".join(lines + [""])


def run_instruction_gate(options: InstructionGateOptions) -> InstructionGateResult:
    """Count, then compare with (or, with ``save_baseline``, store as) the baseline; write the report.

    Raises :class:`BaselineError` before counting when this machine and torch
    version have no baseline at all, and after counting when the run's CPU
    capability has none or the file is foreign or unreadable.
    """
    start = time.perf_counter()
    directory = Path(options.baseline_dir)
    if not options.plugins:  # reject unknown names before minutes under valgrind (plugins load in the worker)
        bench_cases(INSTRUCTION_CONFIG, options.poolers, options.tiers)
    if not options.save_baseline and not candidate_baselines(directory):
        raise BaselineError(f"no instruction baseline for this machine and torch version under "
                            f"{directory / 'instructions'}; record one with `{RECORD_COMMAND}`")
    run = count_instructions(INSTRUCTION_CONFIG, poolers=options.poolers, tiers=options.tiers,
                             plugins=options.plugins, env=options.env, echo=options.echo)
    key = baseline_key(run.environment["cpu_capability"])
    path, saved, comparison = baseline_path(directory, key), None, None
    if options.save_baseline:
        messages = list(run.failures)
        if not messages:  # a run with broken cases would record a baseline without them
            saved = save_baseline(run, directory, INSTRUCTION_CONFIG, keep=lambda k: not options.selected(k))
    else:
        baseline = load_baseline(path, key, INSTRUCTION_CONFIG)
        comparison, messages = judge(baseline, run, threshold=options.threshold,
                                     case_threshold=options.case_threshold, selected=options.selected)
    passed = not messages
    markdown = render_summary(comparison, run, passed=passed, messages=messages, baseline=path, saved=saved)
    report_path = None
    if options.report is not None:
        report_path = Path(options.report)
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(markdown)
        report_path.with_suffix(".json").write_text(json.dumps(
            {"environment": run.environment, "cases": [c.as_dict() for c in run.counts.values()]}, indent=1) + "\n")
    return InstructionGateResult(passed, messages, comparison, run, path, saved, report_path, markdown,
                                 time.perf_counter() - start)
