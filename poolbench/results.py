"""Tidy result rows on disk: one JSON line and one CSV line per measured row, appended cell by cell.

Why append: a run of the full grid takes long and may die (out of memory, a
kernel crash, Ctrl-C); every finished cell is already on disk, and
``poolbench run --resume`` skips the cells that were measured.  Each row
carries its environment (torch version, device name, dtype, batch,
resolution, git commit) so a results file is self-describing.  The JSONL file
is the source of truth for resuming and reporting; the CSV is the same rows
for spreadsheets.
"""
from __future__ import annotations

import datetime as _datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch

from .metrics import MetricRow

__all__ = ["ENV_COLUMNS", "ResultsWriter", "environment", "git_commit", "load_results", "measured_cells"]

ENV_COLUMNS = ("torch", "device", "device_name", "dtype", "batch", "resolution", "threads", "load_avg", "commit",
               "host", "poolbench", "timestamp")
ROW_COLUMNS = tuple(MetricRow.__dataclass_fields__)
CELL_COLUMNS = ("model", "pooler", "tier", "scope", "layer", "metric")


def git_commit(cwd: str | Path | None = None) -> str:
    """The checkout's commit (``+dirty`` when tracked files changed), or ``unknown`` outside git."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def environment(device: torch.device | str, dtype: torch.dtype, batch: int, resolution: int) -> dict:
    """The columns every row of a run carries."""
    from . import __version__

    return {
        "torch": torch.__version__,
        "device": torch.device(device).type,
        "device_name": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "batch": int(batch),
        "resolution": int(resolution),
        "threads": torch.get_num_threads(),
        # other processes on the machine skew CPU timings; the load at the start says how busy it was
        "load_avg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "commit": git_commit(),
        "host": platform.node(),
        "poolbench": __version__,
        "timestamp": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class ResultsWriter:
    """Appends rows to ``<stem>.jsonl`` and ``<stem>.csv`` as they are measured.

    ``resume=False`` starts both files afresh; ``resume=True`` keeps them and
    appends (the report keeps the last row of each cell).
    """

    def __init__(self, stem: str | Path, env: dict, *, resume: bool = False):
        self.stem = Path(stem)
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        self.env = dict(env)
        self.jsonl = self.stem.with_suffix(".jsonl")
        self.csv = self.stem.with_suffix(".csv")
        self._attempts = 0
        if not resume:
            for path in (self.jsonl, self.csv):
                path.unlink(missing_ok=True)

    def write(self, rows: Iterable[MetricRow]) -> None:
        """Append ``rows`` (one cell) to both files, flushed before returning."""
        self._attempts += 1
        attempt = f"{self.env.get('timestamp', '')}#{self._attempts}"
        records = [{**row.as_dict(), **self.env, "attempt": attempt} for row in rows]
        if not records:
            return
        with self.jsonl.open("a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()
        frame = pd.DataFrame.from_records(records, columns=[*ROW_COLUMNS, *ENV_COLUMNS, "attempt"])
        frame.to_csv(self.csv, mode="a", header=not self.csv.exists() or self.csv.stat().st_size == 0,
                     index=False)


def load_results(path: str | Path) -> pd.DataFrame:
    """Rows of a results file (``.jsonl`` or ``.csv``; a stem finds either), last row per quantity kept.

    A resumed run may hold a cell twice (an error, then its retry); the later
    row wins.
    """
    path = Path(path)
    candidates = [path] if path.suffix in (".jsonl", ".csv") else [path.with_suffix(".jsonl"), path.with_suffix(".csv")]
    for candidate in candidates:
        if candidate.exists():
            break
    else:
        raise ValueError(f"no results file at {path} (expected a .jsonl or .csv written by `poolbench run`)")
    if candidate.suffix == ".jsonl":
        frame = pd.read_json(candidate, lines=True, dtype=False)
    else:
        frame = pd.read_csv(candidate, keep_default_na=False, na_values={"value": [""]})
    if frame.empty:
        raise ValueError(f"results file {candidate} holds no rows")
    missing = set(ROW_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{candidate} is not a poolbench results file (missing columns {sorted(missing)})")
    for column in ("layer", "error", "detail", "unit", "shape"):
        frame[column] = frame[column].fillna("").astype(str)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    # a retried cell replaces every row of its earlier attempt (rows of one attempt share ``attempt``)
    if "attempt" in frame.columns:
        last = frame.groupby(list(CELL_COLUMNS), sort=False)["attempt"].transform("last")
        frame = frame[frame["attempt"] == last]
    return frame.reset_index(drop=True)


def measured_cells(path: str | Path) -> set[tuple[str, ...]]:
    """Cells already measured (``ok`` or ``skipped``) in a results file, for ``--resume``; errors are retried."""
    path = Path(path).with_suffix(".jsonl")
    cells: dict[tuple[str, ...], str] = {}
    if not path.exists():
        return set()
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            cells[tuple(str(record.get(c, "")) for c in CELL_COLUMNS)] = record.get("status", "")
    return {cell for cell, status in cells.items() if status in ("ok", "skipped")}
