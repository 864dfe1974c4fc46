"""One gate, two meters: what ``poolbench compare`` does whatever it measures.

Both gates select cases (``--poolers``/``--tiers``), read a stored baseline,
measure, compare ratios to ``avg_pool2d`` with the same thresholds, decide,
save a baseline on request and write a markdown report with the raw
measurements beside it.  Only the measuring differs, so that is all a
:class:`Meter` supplies: the time meter (:mod:`.runner`, pytest-benchmark
in a subprocess) and the instruction meter (:mod:`.instruction_gate`,
callgrind in a subprocess).  :func:`run_gate_with` is the shell.

What the shell guarantees for both meters:

* a gate that compared no case fails ("checked nothing"), whatever the
  reason (every case new, every ratio unusable, nothing selected);
* a baseline that cannot be compared with (missing, unreadable, crafted, a
  shape that differs) is :class:`BaselineError`: the command exits 1 naming
  the file and the command that records a fresh one;
* a measured ratio that is not a finite positive number fails its case;
* a baseline is saved only from a run without failures.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, TextIO

from ..measure.cases import split_names
from .baseline_file import BaselineError
from .comparison import DEFAULT_THRESHOLD, Comparison, ShapeMismatch, compare
from .report import relative_path

__all__ = ["DEFAULT_BASELINE_DIR", "GateResult", "Measurement", "Messages", "Meter", "ShellOptions",
           "StoredBaseline", "judge", "run_gate_with", "stream", "write_report"]

DEFAULT_BASELINE_DIR = Path("benchmarks") / "baselines"


@dataclass
class ShellOptions:
    """What every gate controls; each meter's options add their own fields."""

    poolers: Sequence[str] | None = None
    tiers: Sequence[str] | None = None
    save_baseline: bool = False
    baseline_dir: Path = DEFAULT_BASELINE_DIR
    report: Path | None = None
    threshold: float = DEFAULT_THRESHOLD
    case_threshold: float | None = None
    plugins: Sequence[str] = ()
    env: dict | None = None
    root: Path | None = None
    echo: bool = True

    def selected(self, key: tuple) -> bool:
        """Whether the case ``key`` = (pooler, tier, layer, pass) is in ``--poolers``/``--tiers``."""
        poolers, tiers = split_names(self.poolers), split_names(self.tiers)
        return (not poolers or key[0] in poolers) and (not tiers or key[1] in tiers)

    @property
    def workdir(self) -> Path:
        """Where the measuring process runs and relative paths point: ``root``, by default the current directory."""
        return Path(self.root or Path.cwd()).resolve()

    def resolve(self, path: str | Path) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.workdir / path


@dataclass
class StoredBaseline:
    """The baseline a run is compared with (``path`` None when there is none yet).

    ``results`` maps case keys to records with ``ratio``, ``shape`` and
    ``label``; ``comparable`` is False when a run with these options must
    not be compared with it (saving over a baseline of other settings).
    """

    path: Path | None
    data: Any = None
    results: dict = field(default_factory=dict)
    comparable: bool = True


@dataclass
class Measurement:
    """What a meter measured: per-case results (``ratio``, ``shape``, ``label``) and what went wrong."""

    current: dict
    runs: list
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed_labels: set[str] = field(default_factory=set)  # cases already failed: not also "vanished"
    artifact: Any = None  # the raw measurements, written as JSON beside the report


class Messages:
    """A gate's messages in order, and whether any of them fails the gate."""

    def __init__(self):
        self.lines: list[str] = []
        self.failed = False

    def note(self, *lines: str) -> None:
        self.lines += lines

    def fail(self, *lines: str) -> None:
        self.lines += lines
        self.failed = self.failed or bool(lines)


@dataclass
class GateResult:
    """What a gate decided, and why."""

    passed: bool
    messages: list[str]
    comparison: Comparison | None
    runs: list
    baseline_path: Path | None
    saved_path: Path | None
    report_path: Path | None
    markdown: str
    duration_s: float

    @property
    def run(self):
        """The (first) measuring run: the instruction gate has exactly one."""
        return self.runs[0] if self.runs else None


class Meter(Protocol):
    """What a gate measures with; see :func:`run_gate_with` for the order of the calls."""

    title: str  # the report's and the verdict's name, e.g. "Benchmark gate"
    quantity: str  # what the ratios are ratios of: "time", "instruction"
    record_command: str  # the command that records a fresh baseline
    missing_fails: bool  # a selected baseline case this run did not measure fails the gate

    def prepare(self, options) -> StoredBaseline:
        """Before measuring: reject unknown names, read the baseline if it is known already."""

    def measure(self, options, baseline: StoredBaseline) -> Measurement: ...

    def locate(self, options, measurement: Measurement, baseline: StoredBaseline) -> StoredBaseline:
        """After measuring: the baseline for what was measured (the instruction baseline's key is known only now)."""

    def confirm(self, options, baseline: StoredBaseline, comparison: Comparison, measurement: Measurement,
                messages: Messages) -> Comparison:
        """Re-measure suspects (or not) and return the final comparison."""

    def save(self, options, measurement: Measurement, baseline: StoredBaseline) -> Path: ...

    def render(self, options, result: GateResult, measurement: Measurement) -> str: ...


def run_gate_with(meter: Meter, options: ShellOptions) -> GateResult:
    """Prepare, measure, then save or compare (and confirm), decide, write the report.

    Raises :class:`BaselineError` when the baseline cannot be compared with.
    """
    start = time.perf_counter()
    baseline = meter.prepare(options)
    measurement = meter.measure(options, baseline)
    baseline = meter.locate(options, measurement, baseline)
    messages = Messages()
    messages.note(*measurement.notes)
    messages.fail(*measurement.failures)
    comparison, saved = None, None
    if options.save_baseline:
        if messages.failed:  # a run with broken cases would record a baseline without them
            messages.note("baseline NOT saved: the run had failures")
        else:
            saved = meter.save(options, measurement, baseline)
            messages.note(f"baseline saved: {relative_path(saved, options.workdir)}")
        if baseline.results and baseline.comparable:  # for the report: what changed against the old baseline
            try:
                comparison = _compare(meter, options, baseline, measurement.current)
            except BaselineError:
                comparison = None
    else:
        comparison = _compare(meter, options, baseline, measurement.current)
        comparison = meter.confirm(options, baseline, comparison, measurement, messages)
        judge(comparison, messages, missing_fails=meter.missing_fails, failed_labels=measurement.failed_labels,
              source=baseline.path)
    passed = not messages.failed
    result = GateResult(passed, messages.lines, comparison, measurement.runs, baseline.path, saved, None, "",
                        time.perf_counter() - start)
    result.markdown = meter.render(options, result, measurement)
    if options.report is not None:
        result.report_path = write_report(options.resolve(options.report), result.markdown, measurement.artifact)
    return result


def _compare(meter: Meter, options: ShellOptions, baseline: StoredBaseline, current: dict) -> Comparison:
    try:
        return compare(baseline.results, current, options.threshold, case_threshold=options.case_threshold,
                       selected=options.selected, quantity=meter.quantity)
    except ShapeMismatch as exc:
        raise BaselineError(f"cannot compare with baseline {baseline.path}: {exc}; record a fresh one with "
                            f"`{meter.record_command}`") from None


def judge(comparison: Comparison, messages: Messages, *, missing_fails: bool, failed_labels: set[str] = frozenset(),
          source: Any = None) -> Messages:
    """Add the comparison's failures to ``messages``: regressions, unusable ratios, vanished cases, nothing compared."""
    messages.fail(*comparison.regressions)
    messages.fail(*(f"FAILED {row.label}: {row.note}" for row in comparison.by_status("unmeasured")))
    if missing_fails:
        messages.fail(*(f"VANISHED {row.label}: in the baseline (ratio {row.baseline_ratio:.3f}x) but not "
                        f"measured in this run" for row in comparison.by_status("missing")
                        if _short_label(row.key) not in failed_labels))
    if not comparison.compared:
        messages.fail(f"FAILED no case of this run could be compared with {source} (every case is new, missing "
                      "or unmeasured): the gate checked nothing")
    return messages


def _short_label(key: tuple) -> str:
    pooler, tier, layer, pass_ = key
    return f"{pooler}[{tier}] layer{layer} {pass_}"


def write_report(path: Path, markdown: str, artifact: Any) -> Path:
    """Write the markdown report and, beside it as ``.json``, the raw measurements (a CI artifact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    path.with_suffix(".json").write_text(json.dumps(artifact, indent=1) + "\n")
    return path


def stream(command: Sequence[str], *, env: dict, cwd: Path | None = None, echo: bool = True,
           stderr: TextIO | None = None) -> tuple[int, str]:
    """Run ``command``, echoing its output as it comes; (exit status, the output).

    With ``stderr`` (an open file) the process's stderr goes there only (valgrind's chatter);
    otherwise it is merged into the output.
    """
    process = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=stderr if stderr is not None else subprocess.STDOUT, text=True, bufsize=1)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()
    return process.wait(), "".join(lines)
