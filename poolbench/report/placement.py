"""The report's side-by-side view of the paper's and the authors' ResNet placements of DPP."""
from __future__ import annotations

from typing import Callable

import pandas as pd

from ..models import placed_name

__all__ = ["placement_comparison", "placement_section"]

#: (column, network quantity) of the comparison; time overheads are ratios to the run's own baseline.
_OVERHEADS = (("params", "params_overhead_pct"), ("MACs", "macs_flop_counter"),
              ("forward", "latency_forward"), ("train step", "latency_train"))


def _overhead(net: pd.DataFrame, model: str, pooler: str, tier: str, quantity: str, baseline) -> float | None:
    """Overhead in % of ``pooler[tier]`` in network ``model`` vs the run's baseline network of the same name."""
    if quantity not in net:
        return None
    row = net[(net["model"] == model) & (net["pooler"] == pooler) & (net["tier"] == tier)]
    if row.empty or pd.isna(row.iloc[0][quantity]):
        return None
    if quantity == "params_overhead_pct":
        return float(row.iloc[0][quantity])
    base = net[(net["model"] == model) & (net["pooler"] == baseline[0]) & (net["tier"] == baseline[1])]
    if base.empty or pd.isna(base.iloc[0][quantity]):
        return None
    return 100.0 * (float(row.iloc[0][quantity]) / float(base.iloc[0][quantity]) - 1.0)


def placement_comparison(net: pd.DataFrame, baseline: tuple[str, str],
                         poolers: tuple[str, ...] = ("dpp_lite_sym", "dpp_full_sym")) -> list[dict]:
    """Rows with the parameter, MAC and time overheads of both placements side by side.

    ``net`` is the report's network table (one row per model × pooler × tier, one column per quantity);
    a placement a run did not measure shows "–" (``poolbench run --placement both`` measures both).
    Overheads are in % of the run's baseline network (``baseline`` = (pooler, tier)) of the same placement
    name, so every ratio comes from one run.
    """
    rows = []
    if net.empty:
        return rows
    for model in ("resnet50", "resnet101"):
        authors = placed_name(model, "authors")
        for pooler in poolers:
            tiers = sorted(set(net[(net["model"].isin((model, authors))) & (net["pooler"] == pooler)]["tier"]))
            for tier in tiers:
                row = {"network": model, "pooler": f"{pooler}[{tier}]"}
                for column, quantity in _OVERHEADS:
                    for placement, name in (("paper", model), ("authors", authors)):
                        value = _overhead(net, name, pooler, tier, quantity, baseline)
                        digits = 3 if quantity == "params_overhead_pct" else 1
                        row[f"{column} ({placement})"] = "–" if value is None else f"{value:+.{digits}f}%"
                rows.append(row)
    return rows


def placement_section(net: pd.DataFrame, baseline: tuple[str, str], table: Callable[[list[dict]], str]) -> str:
    """The report's markdown subsection for :func:`placement_comparison` ("" when no ResNet DPP was measured)."""
    rows = placement_comparison(net, baseline)
    if not rows:
        return ""
    note = ("Paper: the stem and, in each stride-2 block, the main path and the shortcut are pooled at the block "
            "input (3648 channels in ResNet-50/101). Authors (visinf/dpp `models/resnetdpp.lua`): the stem keeps "
            "its max pool and each stride-2 block pools its output after the addition and ReLU (3584 channels); "
            "the authors' own ResNet-50/101 used `AverageDownSample` there (2 parameters per channel, window-sum "
            "normalised) whatever DPP variant was asked for — here the measured pooler takes its place. Overheads "
            "are vs the unmodified network measured in the same run; \"–\": not measured (`poolbench run "
            "--placement both` measures both).\n\n")
    return "### Both placements, side by side\n\n" + note + table(rows)
