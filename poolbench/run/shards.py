"""Per-rank results shards and their merge into one results file.

Why shards: under torchrun every rank appends its cells to its own
``<stem>.rank<r>.jsonl`` (through its own :class:`~poolbench.run.results.ResultsWriter`
and lock), so no two processes ever write one file.  Merging rewrites
``<stem>.jsonl/.csv`` from the earlier merged file and every shard: complete
attempts only (a rank killed mid-cell leaves a cut attempt), one attempt per
cell and device — a measured attempt beats an error, a later one an earlier
one.  Baseline cells stay once per (host, device): each device's ratios use
its own baseline.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from .linefile import read_jsonl_records
from .results import CELL_COLUMNS, DEVICE_COLUMNS, move_aside, stem_file
from .runlock import RunLock

__all__ = ["merge_shards", "move_shards_aside", "shard_stem", "shard_stems"]

MEASURED = ("ok", "skipped")


def shard_stem(stem: Path, rank: int) -> Path:
    """``<stem>.rank<r>``: the file stem rank ``r`` writes (``.jsonl``/``.csv`` added by the writer)."""
    return stem.with_name(f"{stem.name}.rank{rank}")


def shard_stems(stem: Path) -> list[Path]:
    """Every shard of ``stem`` on disk, by rank (files an earlier run moved aside are not shards)."""
    pattern = re.compile(rf"{re.escape(stem.name)}\.rank(\d+)\.jsonl")
    found = [(int(match.group(1)), path) for path in stem.parent.glob(f"{stem.name}.rank*.jsonl")
             if (match := pattern.fullmatch(path.name))]
    return [path.with_name(path.name[:-len(".jsonl")]) for _, path in sorted(found)]


def move_shards_aside(stem: Path) -> list[Path]:
    """Keep an earlier launch's shards under new names, so a new run never merges them."""
    moved: list[Path] = []
    for shard in shard_stems(stem):
        with RunLock(shard):  # a shard a running rank still writes is refused, not moved under it
            moved += move_aside(stem_file(shard, ".jsonl"), stem_file(shard, ".csv"))
    return moved


def merge_shards(stem: Path) -> Path | None:
    """Rewrite ``<stem>.jsonl/.csv`` from the merged file and every shard; ``None`` when there is no shard."""
    shards = shard_stems(stem)
    if not shards:
        return None
    merged = stem_file(stem, ".jsonl")
    with RunLock(stem):
        records: list[dict] = []
        for source in [merged] + [stem_file(shard, ".jsonl") for shard in shards]:
            if source.exists():
                read = read_jsonl_records(source)
                read.warn_if_bad()
                records += read.records
        kept = _one_attempt_per_cell(_complete_attempts(records))
        _write_atomically(merged, "".join(json.dumps(record, default=str) + "\n" for record in kept))
        frame = pd.DataFrame.from_records(kept)
        _write_atomically(stem_file(stem, ".csv"), frame.to_csv(index=False) if kept else "")
    return merged


def _complete_attempts(records: list[dict]) -> list[dict]:
    """Records of attempts that have all the rows they announced, each row once (shards repeat merged rows)."""
    unique = list({_row_identity(record): record for record in records}.values())
    sizes = Counter(record.get("attempt") for record in unique)
    return [record for record in unique
            if record.get("cell_rows") in (None, "") or sizes[record.get("attempt")] == int(record["cell_rows"])]


def _row_identity(record: dict) -> tuple:
    return (record.get("attempt"), *(str(record.get(column, "")) for column in CELL_COLUMNS), record.get("quantity"))


def _one_attempt_per_cell(records: list[dict]) -> list[dict]:
    """Per (cell, host, device) the attempt to keep: measured over failed, then the one read last."""
    statuses: dict[str, bool] = {}
    for record in records:
        attempt = record.get("attempt")
        statuses[attempt] = statuses.get(attempt, True) and record.get("status") in MEASURED
    best: dict[tuple, tuple[bool, int, str]] = {}
    for order, record in enumerate(records):
        key = tuple(str(record.get(column, "")) for column in CELL_COLUMNS + DEVICE_COLUMNS)
        candidate = (statuses[record.get("attempt")], order, record.get("attempt"))
        if key not in best or candidate[:2] >= best[key][:2]:
            best[key] = candidate
    chosen = {(key, attempt) for key, (_, _, attempt) in best.items()}
    return [record for record in records
            if (tuple(str(record.get(column, "")) for column in CELL_COLUMNS + DEVICE_COLUMNS),
                record.get("attempt")) in chosen]


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: a crash leaves the old file or the new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)

