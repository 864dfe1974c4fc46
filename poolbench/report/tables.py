"""Table helpers every markdown report shares: tidy pivots, ratios to the run's baseline, cells, sections.

One home for how a results frame becomes a markdown table, so the one-file
report and the multi-device report format every value, ratio and failure alike.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd

from ..metrics import BASELINE_POOLER, BASELINE_TIER, Column, report_columns

__all__ = ["cell", "failures_section", "fmt", "fmt_int", "label", "markdown", "markdown_table", "metric_cells", "missing_section",
           "number", "order", "ratio", "scaled", "values", "with_ratios"]


def label(pooler: str, tier: str) -> str:
    return f"{pooler}[{tier}]"


def values(frame: pd.DataFrame, scope: str) -> pd.DataFrame:
    """ok rows of ``scope`` pivoted to one row per (model, pooler, tier, layer) and one column per quantity."""
    ok = frame[(frame["status"] == "ok") & (frame["scope"] == scope)]
    if ok.empty:
        return pd.DataFrame()
    return ok.pivot_table(index=["model", "pooler", "tier", "layer", "shape"], columns="quantity", values="value",
                          aggfunc="last").reset_index()


def ratio(table: pd.DataFrame, column: str, keys: list[str]) -> pd.Series:
    """``column`` divided by the baseline row's ``column`` with the same ``keys``."""
    if column not in table:
        return pd.Series(float("nan"), index=table.index)
    base = table[(table["pooler"] == BASELINE_POOLER) & (table["tier"] == BASELINE_TIER)]
    base = base.set_index(keys)[column]
    denominators = table.set_index(keys).index.map(lambda key: base.get(key, float("nan")))
    return table[column] / pd.Series(list(denominators), index=table.index)


def fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}{suffix}"


def fmt_int(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{int(round(value)):,}"


def scaled(value, scale: float, digits: int = 2) -> str:
    return fmt(value / scale if value is not None else None, digits)


def order(table: pd.DataFrame) -> pd.DataFrame:
    is_base = (table["pooler"] == BASELINE_POOLER) & (table["tier"] == BASELINE_TIER)
    return table.assign(_base=~is_base).sort_values(["_base", "pooler", "tier"]).drop(columns="_base")


def markdown_table(rows: Iterable[Mapping], columns: Sequence[str] | None = None, *, missing: str = "–",
                   drop_empty: bool = False, format_cell: Callable[[object], str] = str) -> str:
    """The one markdown table renderer of poolbench's reports (run, devices, layerbench, gates, kernels).

    ``rows`` are mappings (or a DataFrame's records); ``columns`` defaults to the keys of the rows in first-seen
    order.  A cell is ``format_cell(value)``, ``missing`` for ``None``/NaN, with ``|`` escaped and line breaks
    folded, so a cell can never break the table.  ``drop_empty`` leaves out columns no row has a value in
    (e.g. CUDA peak memory in a CPU run).  Cells are written as given (no number re-formatting), one line per
    row, so a report diffs line by line.
    """
    rows = [dict(row) for row in (rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows)]
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))

    def text(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return missing
        return format_cell(value).replace("|", "\\|").replace("\n", " ")

    cells = [[text(row.get(column)) for column in columns] for row in rows]
    if drop_empty:
        keep = [i for i in range(len(columns)) if any(line[i] != missing for line in cells)]
        columns, cells = [columns[i] for i in keep], [[line[i] for i in keep] for line in cells]
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict]) -> str:
    """A report table of pre-formatted rows; columns no row has a value in are left out."""
    if not rows:
        return "_no measurements_\n"
    return markdown_table(rows, drop_empty=True)


def number(value, digits: int = 2) -> str:
    """A float rounded for prose (0.47, not 0.47000000000000003); anything else as is."""
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def with_ratios(table: pd.DataFrame, scope: str, keys: list[str]) -> pd.DataFrame:
    """``table`` plus a ``<quantity>/baseline`` column for every ratio column a metric declares."""
    ratios = {f"{q}/baseline": ratio(table, q, keys)
              for column in report_columns(scope) if column.kind == "ratio" for q in column.quantities}
    return table.assign(**ratios)


def cell(r: pd.Series, column: Column) -> str:
    names = [f"{q}/baseline" if column.kind == "ratio" else q for q in column.quantities]
    value = next((r.get(name) for name in names if name in r and not pd.isna(r.get(name))), None)
    if column.kind == "int":
        return fmt_int(value)
    return scaled(value, column.scale, column.digits)


def metric_cells(r: pd.Series, scope: str) -> dict[str, str]:
    """One table row's metric cells: the columns every registered metric declares for ``scope``."""
    return {column.header: cell(r, column) for column in report_columns(scope)}


def failures_section(frame: pd.DataFrame) -> str:
    bad = frame[frame["status"] != "ok"]
    if bad.empty:
        return "## Cells that did not run\n\nnone\n"
    bad = bad.assign(reason=bad["error"].str.slice(0, 200), label=[label(p, t) for p, t in zip(bad["pooler"],
                                                                                                  bad["tier"])])
    grouped = (bad.groupby(["status", "reason"], sort=True)
               .agg(cells=("metric", "size"), models=("model", lambda m: ", ".join(sorted(set(m)))),
                    poolers=("label", lambda p: ", ".join(sorted(set(p)))))
               .reset_index())
    rows = [{"status": r["status"], "cells": r["cells"], "reason": r["reason"],
             "pooler[tier]": r["poolers"], "models": r["models"]}
            for _, r in grouped.iterrows()]
    return "## Cells that did not run\n\n" + markdown(rows)


def missing_section(missing) -> str:
    """The cells of the grid that no complete row holds (a torchrun rank died holding them), if any."""
    if not missing:
        return ""
    shown = [{"model": m, "pooler[tier]": label(p, t), "scope": s, "layer": layer or "–", "metric": metric}
             for m, p, t, s, layer, metric in list(missing)[:50]]
    more = f"\n… and {len(missing) - 50} more\n" if len(missing) > 50 else ""
    return (f"## Cells not measured\n\n{len(missing)} cell(s) of the grid have no result (a rank died or went "
            "silent while holding them); `poolbench run … --resume` measures exactly these.\n\n"
            + markdown(shown) + more)

