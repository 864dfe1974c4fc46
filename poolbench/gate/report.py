"""The markdown summary of a gate run: verdict, failures, what got faster or slower and by how much."""
from __future__ import annotations

import datetime as _dt
import statistics
from pathlib import Path
from typing import Sequence

import torch

from ..report.tables import markdown_table
from .comparison import Comparison
from ..measure.config import COMPARATOR, BenchConfig
from .results import SuiteRun


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}×"


def relative_path(path: Path | None, root: Path | None) -> str:
    if path is None:
        return "–"
    try:
        return str(path.relative_to(root)) if root else str(path)
    except ValueError:
        return str(path)


def render_report(title: str, *, passed: bool, facts: Sequence[str], messages: Sequence[str] = (),
                  comparison: Comparison | None = None) -> str:
    """Either gate's markdown: ``# <title>: PASS|FAIL``, its facts as bullets, the messages, the comparison tables."""
    lines = [f"# {title}: {'PASS' if passed else 'FAIL'}", "", *(f"- {fact}" for fact in facts), ""]
    if messages:
        lines += ["## Messages", "", *(f"- {m}" for m in messages), ""]
    if comparison is None:
        return "\n".join(lines)
    return "\n".join(lines + _comparison_sections(comparison))


def thresholds_fact(comparison: Comparison) -> str:
    """The line saying when the gate fails, in the comparison's own quantity."""
    return (f"fails when a pooler's {comparison.quantity} ratio to `{COMPARATOR}` (geometric mean over the layers, "
            f"per tier and pass) grows by more than {comparison.threshold:.0%}, or one layer's by more than "
            f"{comparison.case_threshold:.0%}")


def render_markdown(comparison: Comparison | None, *, passed: bool, messages: Sequence[str] = (),
                    runs: Sequence[SuiteRun] = (), config: BenchConfig | None = None,
                    baseline_path: Path | None = None, saved_path: Path | None = None, root: Path | None = None,
                    duration_s: float | None = None) -> str:
    """The time gate's markdown summary: verdict, failures, what got faster/slower and by how much."""
    facts = [f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}"]
    if comparison is not None:
        facts.append(thresholds_fact(comparison))
    if config is not None:
        facts.append(f"measured on {config.device}, {config.dtype}, VGG-16 pooling shapes at batch {config.batch} "
                     f"and {config.resolution}², {config.threads} thread(s), {config.clock} clock, "
                     f"~{config.budget_s:g} s per case")
    facts.append(f"baseline: `{relative_path(baseline_path, root)}`"
                 + (f"; saved: `{relative_path(saved_path, root)}`" if saved_path else ""))
    if runs:
        facts.append(f"suite runs: {', '.join(f'{r.duration_s:.0f} s' for r in runs)}"
                     + (f"; gate total {duration_s:.0f} s" if duration_s is not None else ""))
        reasons: dict[str, int] = {}
        for outcome in runs[0].skipped:
            reasons[outcome.message] = reasons.get(outcome.message, 0) + 1
        if reasons:
            facts.append("skipped: " + "; ".join(f"{n} × {reason}" for reason, n in sorted(reasons.items())))
    return render_report("Benchmark gate", passed=passed, facts=facts, messages=messages, comparison=comparison)


def _comparison_sections(comparison: Comparison) -> list[str]:
    """The summary, the per-pooler changes and the per-layer tables of a comparison."""
    counts = {status: len(comparison.by_status(status))
              for status in ("regressed", "slower", "faster", "unchanged", "new", "missing", "unmeasured")}
    lines = ["## Summary", "", "Cases: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n) + ".", ""]
    if comparison.groups:
        changes = [g.change for g in comparison.groups]
        lines += [f"Pooler ratio changes (per tier and pass): median {_pct(statistics.median(changes))}, "
                  f"range {_pct(min(changes))} to {_pct(max(changes))}.", ""]
        lines += markdown_table(
            {"pooler": g.pooler, "tier": g.tier, "pass": g.pass_, "layers": len(g.rows),
             "change (geo. mean)": _pct(g.change), "worst layer": f"layer{g.worst.key[2]} {_pct(g.worst.change)}",
             "status": g.status}
            for g in sorted(comparison.groups, key=lambda g: -g.change)).splitlines()
        lines.append("")
    sections = (("regressed", f"Regressed layers (ratio up by more than {comparison.case_threshold:.0%})"),
                ("slower", f"Slower layers (ratio up by {comparison.threshold:.0%}–{comparison.case_threshold:.0%}, "
                           "not failing on their own)"),
                ("faster", f"Faster layers (ratio down by more than {comparison.threshold:.0%})"))
    for status, title in sections:
        rows = sorted(comparison.by_status(status), key=lambda r: -abs(r.change or 0))
        if rows:
            lines += [f"## {title}", "", *_case_table(rows, status=False), ""]
    for status, title in (("new", "New (no baseline yet)"), ("missing", "In the baseline but not measured"),
                          ("unmeasured", "Measured without a usable ratio")):
        rows = comparison.by_status(status)
        if rows:
            lines += [f"## {title}", "", *(f"- {r.label}: {r.note}" for r in rows), ""]
    lines += ["## All cases", "", *_case_table(comparison.rows, status=True), ""]
    return lines


def _case_table(rows, *, status: bool) -> list[str]:
    columns = ["case", "baseline ratio", "current ratio", "change"] + (["status"] if status else [])
    return markdown_table(({"case": r.label, "baseline ratio": _ratio(r.baseline_ratio),
                            "current ratio": _ratio(r.current_ratio), "change": _pct(r.change), "status": r.status}
                           for r in rows), columns).splitlines()
