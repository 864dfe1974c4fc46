"""Comparing current ratios with the baseline's: per case, per pooler × tier × pass, thresholds."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable

from .. import registry
from ..measure.cases import format_shape
from ..measure.config import COMPARATOR, PASSES
from .results import CaseResult

DEFAULT_THRESHOLD = 0.10


class ShapeMismatch(ValueError):
    """A case's baseline was measured at another shape: the baseline cannot be compared with this run."""


def usable_ratio(value) -> bool:
    """A ratio a comparison can rest on: a finite number > 0 (NaN compares as "unchanged" with anything)."""
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and value > 0)


@dataclass(frozen=True)
class CaseChange:
    """One case (pooler × tier × layer × pass) in a comparison."""

    key: tuple
    label: str
    status: str  # regressed (fails) | slower | faster | unchanged | new | missing | unmeasured (fails)
    baseline_ratio: float | None = None
    current_ratio: float | None = None
    note: str = ""

    @property
    def change(self) -> float | None:
        if usable_ratio(self.baseline_ratio) and usable_ratio(self.current_ratio):
            return self.current_ratio / self.baseline_ratio - 1
        return None


@dataclass(frozen=True)
class GroupRow:
    """A pooler's time ratio change for one tier and pass: the geometric mean over its layers."""

    pooler: str
    tier: str
    pass_: str
    change: float
    rows: tuple[CaseChange, ...]
    status: str  # regressed (fails) | faster | unchanged

    @property
    def label(self) -> str:
        return f"{self.pooler}[{self.tier}] {self.pass_}"

    @property
    def worst(self) -> CaseChange:
        return max(self.rows, key=lambda row: row.change)


@dataclass
class Comparison:
    """Current ratios against the baseline's, per case and per pooler × tier × pass."""

    threshold: float
    case_threshold: float
    rows: list[CaseChange]
    groups: list[GroupRow]
    quantity: str = "time"  # what the ratios are ratios of, for the messages: time | instruction

    def by_status(self, status: str) -> list[CaseChange]:
        return [row for row in self.rows if row.status == status]

    @property
    def regressed_groups(self) -> list[GroupRow]:
        return [group for group in self.groups if group.status == "regressed"]

    @property
    def regressions(self) -> list[str]:
        """One message per failing pooler × tier × pass and per failing single case."""
        messages = [group_regression_message(g, self.threshold, self.quantity) for g in self.regressed_groups]
        return messages + [regression_message(r, self.case_threshold, self.quantity)
                           for r in self.by_status("regressed")]

    @property
    def compared(self) -> int:
        """How many cases were actually compared (a gate that compared none has checked nothing)."""
        return sum(row.change is not None for row in self.rows)

    @property
    def suspects(self) -> list[tuple]:
        """Case keys worth re-measuring: every layer of a regressed group, every regressed case."""
        keys = {row.key for group in self.regressed_groups for row in group.rows}
        return sorted(keys | {row.key for row in self.by_status("regressed")}, key=_sort_key)


def compare(baseline: dict[tuple, CaseResult], current: dict[tuple, CaseResult], threshold: float = DEFAULT_THRESHOLD,
            *, case_threshold: float | None = None, selected: Callable[[tuple], bool] | None = None,
            quantity: str = "time") -> Comparison:
    """Compare ratios; the gate fails on ``Comparison.regressions``.

    Two levels, because a single layer's ratio is noisier than a pooler's:

    * a pooler's ratio for one tier and pass — the geometric mean of its
      per-layer ratio changes — up by more than ``threshold`` (default 10%);
    * any single layer's ratio up by more than ``case_threshold`` (default
      3 × ``threshold``), so a slowdown confined to one shape is not averaged away.

    ``selected(key)`` limits the baseline's cases that are expected in
    ``current`` (``--poolers``/``--tiers``); baseline cases outside it are ignored.

    Only finite positive ratios are compared: a current ratio that is not
    (a broken measurement) is ``unmeasured``, and the gates fail on it; a
    baseline ratio that is not counts as no baseline (the gates' loader
    refuses such a file before it gets here).  A shape that differs from the
    baseline's is :class:`ShapeMismatch`.
    """
    for name, value in (("threshold", threshold), ("case_threshold", case_threshold)):
        if value is not None and not usable_ratio(value):
            raise ValueError(f"{name} must be a finite positive fraction (0.10 = 10%), got {value!r}")
    case_threshold = 3 * threshold if case_threshold is None else case_threshold
    rows = []
    for key in sorted(set(baseline) | set(current), key=_sort_key):
        base, cur = baseline.get(key), current.get(key)
        if cur is None:
            if base.ratio is not None and (selected is None or selected(key)):
                rows.append(CaseChange(key, base.label, "missing", base.ratio, None, "not measured in this run"))
            continue
        if cur.ratio is None:
            continue  # the comparator's own benchmarks carry no ratio
        if not usable_ratio(cur.ratio):
            rows.append(CaseChange(key, cur.label, "unmeasured", getattr(base, "ratio", None), None,
                                   f"measured ratio {cur.ratio!r} is not a finite number > 0"))
            continue
        if base is None or not usable_ratio(base.ratio):
            rows.append(CaseChange(key, cur.label, "new", None, cur.ratio, "no baseline"))
            continue
        if tuple(base.shape) != tuple(cur.shape):
            raise ShapeMismatch(f"{cur.label}: the baseline measured shape {format_shape(base.shape)}; run at the "
                             "baseline's batch/resolution or refresh the baseline")
        change = cur.ratio / base.ratio - 1
        status = ("regressed" if change > case_threshold else "slower" if change > threshold
                  else "faster" if change < -threshold else "unchanged")
        rows.append(CaseChange(key, cur.label, status, base.ratio, cur.ratio))
    grouped: dict[tuple, list[CaseChange]] = {}
    for row in rows:
        if row.change is not None:
            grouped.setdefault((row.key[0], row.key[1], row.key[3]), []).append(row)
    groups = []
    for (pooler, tier, pass_), members in grouped.items():
        change = math.exp(statistics.fmean(math.log1p(row.change) for row in members)) - 1
        status = "regressed" if change > threshold else "faster" if change < -threshold else "unchanged"
        groups.append(GroupRow(pooler, tier, pass_, change, tuple(members), status))
    return Comparison(threshold, case_threshold, rows, groups, quantity)


def _sort_key(key: tuple) -> tuple:
    pooler, tier, layer, pass_ = key
    order = registry.known_tiers()
    tier_order = order.index(tier) if tier in order else len(order)
    return (pooler, tier_order, tier, PASSES.index(pass_) if pass_ in PASSES else 9, layer)


def regression_message(row: CaseChange, case_threshold: float, quantity: str = "time") -> str:
    """The line a failing gate prints for one case slower than the single-layer threshold."""
    return (f"REGRESSION {row.label}: {quantity} ratio to {COMPARATOR} {row.baseline_ratio:.3f}x -> "
            f"{row.current_ratio:.3f}x ({row.change:+.1%}; single-layer threshold +{case_threshold:.0%})")


def group_regression_message(group: GroupRow, threshold: float, quantity: str = "time") -> str:
    """The line a failing gate prints for a pooler × tier × pass whose ratio grew."""
    layers = ", ".join(f"layer{r.key[2]} {r.baseline_ratio:.3f}x -> {r.current_ratio:.3f}x ({r.change:+.1%})"
                       for r in group.rows)
    return (f"REGRESSION {group.label}: {quantity} ratio to {COMPARATOR} up {group.change:+.1%} "
            f"(geometric mean over {len(group.rows)} layers; threshold +{threshold:.0%}): {layers}")
