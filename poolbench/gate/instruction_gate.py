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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..measure import bench_cases
from .comparison import Comparison, compare
from ..measure import COMPARATOR
from .instruction_baseline import (RECORD_COMMAND, BaselineError, baseline_key, baseline_path, candidate_baselines,
                                   load_baseline, save_baseline)
from .instructions import INSTRUCTION_CONFIG, InstructionRun, count_instructions
from .report import render_report, thresholds_fact
from .shell import GateResult, Measurement, Messages, ShellOptions, StoredBaseline, judge as judge_comparison
from .shell import run_gate_with

__all__ = ["CASE_THRESHOLD", "GROUP_THRESHOLD", "InstructionGateOptions", "InstructionGateResult", "InstructionMeter",
           "judge", "render_summary", "run_instruction_gate"]

GROUP_THRESHOLD = 0.03
CASE_THRESHOLD = 0.10
DEFAULT_REPORT = Path("reports") / "instruction_compare.md"

#: One result type for both gates; ``result.run`` is the valgrind run.
InstructionGateResult = GateResult


@dataclass
class InstructionGateOptions(ShellOptions):
    """What ``poolbench compare --metric instructions`` controls; see :func:`run_instruction_gate`."""

    report: Path | None = DEFAULT_REPORT
    threshold: float = GROUP_THRESHOLD
    case_threshold: float | None = CASE_THRESHOLD


def run_instruction_gate(options: InstructionGateOptions) -> GateResult:
    """Count, then compare with (or, with ``save_baseline``, store as) the baseline; write the report.

    Raises :class:`BaselineError` before counting when this machine and torch
    version have no baseline at all, and after counting when the run's CPU
    capability has none or the file is foreign, unreadable or crafted.
    """
    return run_gate_with(InstructionMeter(), options)


class InstructionMeter:
    """Callgrind instruction-count ratios to ``avg_pool2d``, all cases in one valgrind process."""

    title = "Instruction-count gate"
    quantity = "instruction"
    record_command = RECORD_COMMAND
    missing_fails = True  # counts are exact: a case that is no longer counted is a vanished pooler or tier

    def prepare(self, options: InstructionGateOptions) -> StoredBaseline:
        if not options.plugins:  # reject unknown names before minutes under valgrind (plugins load in the worker)
            bench_cases(INSTRUCTION_CONFIG, options.poolers, options.tiers)
        directory = options.resolve(options.baseline_dir)
        if not options.save_baseline and not candidate_baselines(directory):
            raise BaselineError(f"no instruction baseline for this machine and torch version under "
                                f"{directory / 'instructions'}; record one with `{RECORD_COMMAND}`")
        return StoredBaseline(None)

    def measure(self, options: InstructionGateOptions, baseline: StoredBaseline) -> Measurement:
        run = count_instructions(INSTRUCTION_CONFIG, poolers=options.poolers, tiers=options.tiers,
                                 plugins=options.plugins, env=options.env, echo=options.echo)
        artifact = {"environment": run.environment, "cases": [c.as_dict() for c in run.counts.values()]}
        return Measurement(run.counts, [run], failures=list(run.failures),
                           failed_labels={label for label, _ in run.errors}, artifact=artifact)

    def locate(self, options: InstructionGateOptions, measurement: Measurement,
               baseline: StoredBaseline) -> StoredBaseline:
        """The baseline for the run's key (machine, torch, the CPU capability measured under valgrind)."""
        key = baseline_key(measurement.runs[0].environment["cpu_capability"])
        path = baseline_path(options.resolve(options.baseline_dir), key)
        if options.save_baseline:
            return StoredBaseline(path)
        return StoredBaseline(path, results=load_baseline(path, key, INSTRUCTION_CONFIG))

    def confirm(self, options, baseline, comparison: Comparison, measurement, messages) -> Comparison:
        return comparison  # counts are exact: nothing to re-measure

    def save(self, options: InstructionGateOptions, measurement: Measurement, baseline: StoredBaseline) -> Path:
        return save_baseline(measurement.runs[0], options.resolve(options.baseline_dir), INSTRUCTION_CONFIG,
                             keep=lambda key: not options.selected(key))

    def render(self, options, result: GateResult, measurement: Measurement) -> str:
        return render_summary(result.comparison, result.run, passed=result.passed, messages=result.messages,
                              baseline=result.baseline_path, saved=result.saved_path)


def judge(baseline: dict, run: InstructionRun, *, threshold: float = GROUP_THRESHOLD,
          case_threshold: float = CASE_THRESHOLD,
          selected: Callable[[tuple], bool] | None = None) -> tuple[Comparison, list[str]]:
    """The comparison and the failure messages (empty: the gate passes).

    ``selected(key)`` limits which baseline cases must be present
    (``--poolers``/``--tiers``); a selected baseline case that the run did not
    count — vanished, or failed — is a failure, and so is a run that
    compared no case at all.
    """
    comparison = compare(baseline, run.counts, threshold, case_threshold=case_threshold, selected=selected,
                         quantity=InstructionMeter.quantity)
    messages = Messages()
    messages.fail(*run.failures)
    judge_comparison(comparison, messages, missing_fails=True, failed_labels={label for label, _ in run.errors},
                     source="the baseline")
    return comparison, messages.lines


def render_summary(comparison: Comparison | None, run: InstructionRun | None, *, passed: bool,
                   messages: Sequence[str], baseline: Path | None, saved: Path | None) -> str:
    """Markdown: verdict, what was counted, messages, then the comparison tables both gates share."""
    config = INSTRUCTION_CONFIG
    facts = [f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; callgrind instruction counts, one call per case "
             f"after warm-up, VGG-16 pooling shapes at batch {config.batch} and {config.resolution}², "
             f"{config.threads} thread, each as a ratio to `{COMPARATOR}` on the same input and pass"]
    if run is not None:
        env = run.environment
        facts.append(f"torch {env.get('torch')}, CPU capability under valgrind {env.get('cpu_capability')}; "
                     f"valgrind process {run.wall_s:.0f} s wall, {run.cpu_s:.0f} s CPU; "
                     f"{len(run.counts)} cases counted, {len(run.skipped)} skipped")
        reasons: dict[str, int] = {}
        for _, reason in run.skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        facts += [f"skipped: {n} × {reason}" for reason, n in sorted(reasons.items())]
    if comparison is not None:
        facts.append(thresholds_fact(comparison))
    facts.append(f"baseline: `{baseline}`" + (f"; saved: `{saved}`" if saved else ""))
    return render_report("Instruction-count gate", passed=passed, facts=facts, messages=messages,
                         comparison=comparison)
