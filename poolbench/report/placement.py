"""The report's side-by-side view of each pooler at the paper's sites and in its authors' own network."""
from __future__ import annotations

from typing import Callable

import pandas as pd

from .. import models
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
                         poolers: tuple[str, ...] | None = None) -> list[dict]:
    """Rows with the parameter, MAC and time overheads of both placements side by side.

    ``net`` is the report's network table (one row per model × pooler × tier, one column per quantity);
    ``poolers`` default to every pooler the run measured.  The authors' column reads "not published" where
    the pooler's authors built no such network, "= paper" where their network is the paper's sites (the
    antialiased VGG-16), "–" where it exists but this run did not measure it (``poolbench run --placement
    both`` measures both).  Overheads are in % of the run's baseline network (``baseline`` = (pooler,
    tier)) of the same placement name, so every ratio comes from one run.
    """
    rows = []
    if net.empty:
        return rows
    present = set(net["model"])
    bases = list(dict.fromkeys(models.split_placement(name)[0] for name in net["model"]))
    measured = list(dict.fromkeys(net["pooler"]))
    wanted = [p for p in (poolers if poolers is not None else measured) if p != baseline[0]]
    for model in bases:
        authors = placed_name(model, "authors")
        if model not in models.MODELS:
            continue
        for pooler in wanted:
            tiers = sorted(set(net[(net["model"].isin((model, authors))) & (net["pooler"] == pooler)]["tier"]))
            published = _published(authors, pooler)
            if poolers is None and published == "not published" and authors not in present:
                continue  # nothing to put side by side
            for tier in tiers:
                row = {"network": model, "pooler": f"{pooler}[{tier}]", "authors' network": published}
                for column, quantity in _OVERHEADS:
                    for placement, name in (("paper", model), ("authors", authors)):
                        value = _overhead(net, name, pooler, tier, quantity, baseline)
                        digits = 3 if quantity == "params_overhead_pct" else 1
                        if value is None and placement == "authors" and published in ("not published", "= paper"):
                            row[f"{column} ({placement})"] = published
                        else:
                            row[f"{column} ({placement})"] = "–" if value is None else f"{value:+.{digits}f}%"
                rows.append(row)
    return rows


def _published(authors_name: str, pooler: str) -> str:
    """Where ``pooler``'s authors' network comes from: its source, "= paper", or "not published"."""
    try:
        declaration = models.network_declaration(authors_name, pooler)
    except ValueError:
        return "not published"
    if declaration is None:
        return "not published"
    return declaration.source if models.has_network(authors_name, pooler) else "= paper"


def placement_section(net: pd.DataFrame, baseline: tuple[str, str], table: Callable[[list[dict]], str]) -> str:
    """The report's markdown subsection for :func:`placement_comparison` ("" when no ResNet DPP was measured)."""
    rows = placement_comparison(net, baseline)
    if not rows:
        return ""
    note = ("Paper: every pooler at the same sites — the stem and, in each stride-2 block, the main path and the "
            "shortcut pooled at the block input (3648 channels in ResNet-50/101), each pooler with its authors' "
            "per-site module (LIP: one logit trunk per block, as LIP-ResNet; strided conv: the original ResNet). "
            "Authors: each pooler in the network its authors built (source named): visinf/dpp's ResNet for DPP "
            "(one pooler per stride-2 block, on its output; their own layer there was `AverageDownSample`), "
            "sebgao/LIP's LIP-ResNet, adobe/antialiased-cnns' ResNet and VGG, SoftPool's and AdaPool's ResNets "
            "(the stem only). \"not published\": the pooler's authors built no such network (none is "
            "substituted); \"= paper\": their network is the paper's sites; \"–\": not measured (`poolbench run "
            "--placement both` measures both). Overheads are vs the unmodified network measured in the same "
            "run.\n\n")
    return "### Both placements, side by side\n\n" + note + table(rows)
