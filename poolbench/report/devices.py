"""One report over several devices: results files from other hosts or GPUs, or a multi-host torchrun run.

Why a separate layout: a ratio is only meaningful against the baseline
measured on the same device, so the rows are split into device groups (one
per file, host and device model), every ratio is computed inside its group
alone, and the groups sit side by side — one column group per device — with
the settings that differ between them listed, not hidden.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import models
from . import tables
from ..run.results import DEVICE_COLUMNS, ENV_COLUMNS, load_results, settings_differences

__all__ = ["DeviceGroup", "build_device_report", "device_groups", "write_merged_report"]

#: Environment columns not compared between device groups: their own timestamp and load, and the host and
#: device model that already label the columns.
_NOT_COMPARED = ("timestamp", "load_avg", "rank") + DEVICE_COLUMNS


@dataclass
class DeviceGroup:
    """The rows one device measured (one file, host and device model), and the label of its columns."""

    label: str
    frame: pd.DataFrame

    @property
    def env(self) -> dict:
        first = self.frame.iloc[0]
        keys = [key for key in ENV_COLUMNS + ("timing",) if key in first.index and not pd.isna(first[key])]
        return {key: first[key] for key in keys}


def device_groups(frame: pd.DataFrame) -> list[DeviceGroup]:
    """``frame`` split by (source file, host, device model), labelled ``device @ host`` (+ file when ambiguous)."""
    keys = [column for column in ("source",) + DEVICE_COLUMNS if column in frame.columns]
    parts = list(frame.groupby(keys, sort=False, dropna=False)) if keys else [((), frame)]
    plain = [_device_label(part) for _, part in parts]
    labels = [label if plain.count(label) == 1 or "source" not in part else f"{label} ({part['source'].iloc[0]})"
              for label, (_, part) in zip(plain, parts)]
    return [DeviceGroup(label, part.reset_index(drop=True)) for label, (_, part) in zip(labels, parts)]


def _device_label(part: pd.DataFrame) -> str:
    first = part.iloc[0]
    name = first.get("device_name", first.get("device", "?"))
    return f"{name} @ {first.get('host', '?')}"


def _side_by_side(groups: list[DeviceGroup], model: str, scope: str, keys: list[str]) -> str:
    """One table: a row per (layer,) pooler[tier], a column group per device; ratios inside each device only."""
    rows: dict[tuple, dict] = {}
    for group in groups:
        table = tables.values(group.frame[group.frame["model"] == model], scope)
        if table.empty:
            continue
        table = tables.order(tables.with_ratios(table, scope, keys))
        for _, r in table.iterrows():
            label = tables.label(r["pooler"], r["tier"])
            key = (r["layer"], label) if scope == "layer" else (label,)
            row = rows.setdefault(key, {"layer": key[0], "pooler[tier]": key[-1]} if scope == "layer"
                                  else {"pooler[tier]": key[0]})
            row.update({f"{header} · {group.label}": value for header, value in tables.metric_cells(r, scope).items()})
    if not rows:
        return ""
    return tables.markdown_table(rows.values(), drop_empty=True)


def _settings_section(groups: list[DeviceGroup]) -> str:
    reference = groups[0]
    lines = []
    for group in groups[1:]:
        for difference in settings_differences(reference.env, group.env, labels=(f"on {reference.label}",
                                                                                 f"on {group.label}"),
                                               ignore=_NOT_COMPARED):
            lines.append(f"- {difference}")
    body = "\n".join(lines) if lines else "none: every device group was measured with the same settings"
    return "## Settings that differ between devices\n\n" + body + "\n"


def build_device_report(frame: pd.DataFrame, name: str, missing=()) -> str:
    """Markdown: per network (and per layer) one side-by-side table, a column group per device."""
    groups = device_groups(frame)
    present = [m for m in models.MODELS if m in set(frame["model"])] + sorted(set(frame["model"]) - set(models.MODELS))
    parts = [f"# poolbench report: {name}\n",
             f"Devices: {', '.join(f'**{g.label}**' for g in groups)}.\n",
             "Every ratio divides a row by the baseline measured on the **same device** (its max-pool network, "
             "or `nn.MaxPool2d` per layer); ratios are never formed between devices. Compare devices through their "
             "ratios, or through absolute values only where the settings below agree.\n",
             _settings_section(groups), "# Networks\n"]
    for model in present:
        table = _side_by_side(groups, model, "network", ["model"])
        parts.append(f"## {models.title(model)}\n\n" + (table or "_no network measurements_\n"))
    layer_tables = [(model, _side_by_side(groups, model, "layer", ["model", "layer"])) for model in present]
    if any(table for _, table in layer_tables):
        parts.append("# Per layer\n")
        parts.extend(f"### {models.title(model)}: per layer\n\n{table}" for model, table in layer_tables if table)
    parts.append(tables.missing_section(missing))
    parts.append(tables.failures_section(frame))
    return "\n".join(part for part in parts if part)


def write_merged_report(results: list[str | Path], out: str | Path) -> Path:
    """Render one report at ``out`` (a ``.md`` path) from several results files."""
    frames = []
    for path in map(Path, results):
        frames.append(load_results(path).assign(source=path.stem))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_device_report(pd.concat(frames, ignore_index=True), out.stem), encoding="utf-8")
    return out
