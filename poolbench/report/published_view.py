"""The published figures (:mod:`.published`) beside a run's measurements: costs, quoted accuracy, "is it worth it".

Every row names its source.  Costs are compared with the run's network rows (``net``: one row per
model × pooler × tier, a column per quantity); accuracy is quoted, never measured, and shown beside the
train-step overhead this run measured for the same pooler in the same network.
"""
from __future__ import annotations

import math

import pandas as pd

from .. import models
from ..metrics import BASELINE_POOLER, BASELINE_TIER
from .published import ACCURACY, COSTS, PublishedCost

__all__ = ["accuracy_rows", "accuracy_section", "cost_rows", "plot_worth", "train_overhead_pct"]


def _row(net: pd.DataFrame, network: str, pooler: str) -> pd.Series | None:
    """The run's row of ``pooler`` in ``network`` (the published baseline "max" is torchvision's network)."""
    if net.empty:
        return None
    if pooler == BASELINE_POOLER:
        sel = net[(net["model"] == network) & (net["pooler"] == BASELINE_POOLER) & (net["tier"] == BASELINE_TIER)]
    else:
        sel = net[(net["model"] == network) & (net["pooler"] == pooler)]
    return None if sel.empty else sel.iloc[0]


def _value(row: pd.Series | None, column: str) -> float | None:
    if row is None or column not in row or pd.isna(row[column]):
        return None
    return float(row[column])


def _macs(row) -> float | None:
    return _value(row, "macs_fvcore") if _value(row, "macs_fvcore") is not None else _value(row, "macs_flop_counter")


def _measured(net: pd.DataFrame, figure: PublishedCost, resolution) -> tuple[float | None, str]:
    """(measured value in the figure's unit, why it is missing)."""
    row = _row(net, figure.network, figure.pooler)
    if row is None:
        return None, f"not measured (`poolbench run` with {figure.pooler} on {figure.network})"
    if figure.quantity == "params":
        return _value(row, "params"), "no params metric"
    if figure.quantity == "params_overhead_pct":
        return _value(row, "params_overhead_pct"), "no params metric"
    if figure.quantity in ("gmacs", "macs_overhead_pct"):
        macs = _macs(row)
        if macs is None:
            return None, "no macs metric"
        if figure.quantity == "gmacs":
            if resolution not in (224, "224"):
                return None, f"published at 224²; this run used {resolution}²"
            return macs / 1e9, ""
        base = _macs(_row(net, figure.network, BASELINE_POOLER))
        return (None, "no baseline MACs") if base is None else (100.0 * (macs / base - 1.0), "")
    return None, f"unknown quantity {figure.quantity}"


#: (tolerance, how the value is shown) per quantity; a published figure is rounded, the tolerance allows it.
_TOLERANCE = {"params": (0.01, "rel"), "gmacs": (0.02, "rel"), "params_overhead_pct": (0.0015, "abs-small"),
              "macs_overhead_pct": (2.0, "abs")}


def _agrees(figure: PublishedCost, measured: float) -> str:
    tolerance, kind = _TOLERANCE[figure.quantity]
    if figure.pooler.startswith("dpp") and figure.quantity == "params_overhead_pct":
        ok = abs(measured - figure.value) <= tolerance  # three decimals, rounded differently
    elif figure.quantity == "params_overhead_pct":
        ok = abs(measured - figure.value) <= 0.1  # one decimal in the README
    elif kind == "rel":
        ok = abs(measured / figure.value - 1.0) <= tolerance
    else:
        ok = abs(measured - figure.value) <= tolerance
    if ok:
        return "yes"
    if figure.quantity in ("gmacs", "macs_overhead_pct"):
        return ("no: poolbench also counts the pooling layers' elementwise arithmetic and window ops, which "
                "the published FLOPs (convolutions and norms) leave out")
    return "no"


def _show(quantity: str, value: float) -> str:
    if quantity == "params":
        return f"{value / 1e6:.2f}M ({value:,.0f})"
    if quantity == "gmacs":
        return f"{value:.2f} G"
    digits = 3 if abs(value) < 1 else 1
    return f"{value:+.{digits}f}%"


def cost_rows(net: pd.DataFrame, resolution) -> list[dict]:
    """One row per published cost (:data:`COSTS`): figure, published value, source, measured, agrees."""
    rows = []
    for figure in COSTS:
        measured, why = _measured(net, figure, resolution)
        rows.append({
            "figure": figure.label,
            "published": _show(figure.quantity, figure.value),
            "source": figure.source,
            "measured": why if measured is None else _show(figure.quantity, measured),
            "agrees": "–" if measured is None else _agrees(figure, measured),
        })
    return rows


def train_overhead_pct(net: pd.DataFrame, network: str, pooler: str) -> float | None:
    """This run's train-step latency of ``pooler`` in ``network`` vs the unmodified network, in %."""
    row, base = _row(net, network, pooler), _row(net, network, BASELINE_POOLER)
    value, reference = _value(row, "latency_train"), _value(base, "latency_train")
    if value is None or not reference:
        return None
    return 100.0 * (value / reference - 1.0)


def accuracy_rows(net: pd.DataFrame) -> list[dict]:
    """Quoted accuracy (:data:`ACCURACY`) beside this run's measured train-step overhead in the same network."""
    rows = []
    for quote in ACCURACY:
        overhead = train_overhead_pct(net, quote.network, quote.pooler)
        rows.append({
            "pooler": quote.pooler,
            "network": models.title(quote.network),
            "dataset": quote.dataset,
            "quoted (not measured)": f"{quote.metric} {quote.value:.2f} vs {quote.baseline:.2f} ({quote.baseline_label})",
            "accuracy change": f"{quote.change:+.2f} pts",
            "source": quote.source + (f"; {quote.note}" if quote.note else ""),
            "measured train-step overhead": "not measured" if overhead is None else f"{overhead:+.0f}%",
        })
    return rows


def accuracy_section(net: pd.DataFrame, table) -> str:
    note = ("Accuracy is **quoted** from each pooler's paper or official repository (dataset and network as "
            "named), never measured by poolbench; the train-step overhead beside it is this run's, in the same "
            "network (the authors' network where they built one). Poolers with no published accuracy for these "
            "networks are left out.\n\n")
    return "### Published accuracy beside measured cost\n\n" + note + table(accuracy_rows(net))


def plot_worth(plt, net: pd.DataFrame) -> list[tuple[str, object]]:
    """One figure per network: quoted accuracy change (y) vs measured train-step overhead (x), points labelled."""
    figures = []
    by_network: dict[str, list] = {}
    for quote in ACCURACY:
        overhead = train_overhead_pct(net, quote.network, quote.pooler)
        if overhead is not None and math.isfinite(overhead):
            by_network.setdefault(models.split_placement(quote.network)[0], []).append((quote, overhead))
    for network, points in by_network.items():
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for quote, overhead in points:
            ax.scatter([overhead], [quote.change])
            ax.annotate(f"{quote.pooler} ({quote.dataset}; {quote.source.split(' ')[0]})", (overhead, quote.change),
                        fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.margins(x=0.35, y=0.15)  # room for the labels
        ax.set_xlabel("measured train-step overhead vs the original network (%)")
        ax.set_ylabel("published accuracy change (points, quoted)")
        ax.set_title(f"{models.title(network)}: is it worth it?")
        figures.append((f"worth_{network}", fig))
    return figures
