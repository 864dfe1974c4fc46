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

import csv
import dataclasses
import datetime as _datetime
import json
import math
import os
import platform
import re
import subprocess
import uuid
import warnings
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch

from .. import __version__
from .linefile import append_text, repair_torn_tail
from ..metrics import CellKey, MetricRow
from .records import CELL_COLUMNS, DEVICE_COLUMNS, ROW_COLUMNS, complete_attempts, read_records, winning_attempts
from .runlock import RunLock

__all__ = ["ENV_COLUMNS", "ResultsWriter", "check_run_name", "environment", "git_commit", "load_results",
           "measured_cells", "move_aside", "stem_file", "read_rows", "settings_differences", "check_output_file",
           "check_name_fits", "check_results_stem", "RANK_VOLATILE"]

ENV_COLUMNS = ("torch", "device", "device_name", "dtype", "batch", "resolution", "threads", "load_avg", "commit",
               "host", "poolbench", "timestamp")
#: Environment columns that legitimately change between a run and its resume (a resume may use other ranks).
VOLATILE_ENV = ("load_avg", "timestamp", "commit", "poolbench", "rank")
#: What may differ between the ranks of one launch: where they run (host, GPU model, their share of the cores)
#: besides what may differ between a run and its resume.  Every other setting must be the same on every rank.
RANK_VOLATILE = VOLATILE_ENV + DEVICE_COLUMNS + ("threads",)
NUMERIC_COLUMNS = ("value", "seconds", "batch", "resolution", "threads", "load_avg", "cell_rows")
_RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


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


def environment(device: torch.device | str, dtype: torch.dtype, batch: int, resolution: int, **settings) -> dict:
    """The columns every row of a run carries; ``settings`` adds run settings (e.g. ``timing``) as strings.

    Every column but :data:`VOLATILE_ENV` must match for ``--resume`` to append to a file.
    """
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
        **{key: str(value) for key, value in settings.items()},
    }


class ResultsWriter:
    """Appends each measured cell to ``<stem>.jsonl`` and ``<stem>.csv``, safe against crashes and rivals.

    * It holds ``<stem>.lock`` for its lifetime (:class:`~poolbench.run.runlock.RunLock`): a second
      run on the same files is refused instead of mixing rows into them.
    * ``resume=False`` keeps an earlier run's files: they are moved aside to
      ``<stem>.<timestamp>.jsonl/.csv`` (listed in :attr:`moved_aside`), never deleted.
    * ``resume=True`` refuses files measured with other settings (:func:`settings_differences`),
      cuts a torn last line left by a crash, then appends.
    * A cell's rows go out in one line-atomic append each and carry ``cell_rows``, so a cell
      cut short by a crash is recognised as incomplete and measured again.

    Use it as a context manager (or call :meth:`close`) so the lock is released.
    """

    def __init__(self, stem: str | Path, env: dict, *, resume: bool = False):
        self.stem = Path(stem)
        check_results_stem(self.stem)
        self.env = dict(env)
        self.jsonl = stem_file(self.stem, ".jsonl")
        self.csv = stem_file(self.stem, ".csv")
        self.moved_aside: list[Path] = []
        self._run_id = f"{self.env.get('timestamp', '')}/{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self._attempts = 0
        self._lock = RunLock(self.stem).acquire()
        try:
            if resume:
                self._prepare_resume()
            else:
                self.moved_aside = move_aside(self.jsonl, self.csv)
        except BaseException:
            self._lock.release()
            raise

    def _prepare_resume(self) -> None:
        for path in (self.jsonl, self.csv):
            repair_torn_tail(path)
        if self.jsonl.exists() and self.jsonl.stat().st_size > 0:
            read = read_records(self.jsonl)
            if not read.records and read.bad_lines:
                first = next(iter(read.reasons.items()), None)
                why = f" (line {first[0]}: {first[1]})" if first else ""
                raise ValueError(f"cannot resume {self.jsonl}: it holds no poolbench result row{why}, so poolbench "
                                 "did not write it; choose another --name, or move the file away")
            if read.records:
                differences = settings_differences(read.records[0], self.env)
                if differences:
                    raise ValueError(f"cannot resume {self.jsonl}: it was measured with other settings "
                                     f"({'; '.join(differences)}); rerun with the file's settings, or drop "
                                     "--resume to start a new run (the old file is kept aside)")

    def write(self, rows: Iterable[MetricRow]) -> None:
        """Append ``rows`` (one cell) to both files, each in a single write, before returning."""
        rows = [_finite(row) for row in rows]
        if not rows:
            return
        self._attempts += 1
        extra = {"attempt": f"{self._run_id}#{self._attempts}", "cell_rows": len(rows)}
        records = [{**row.as_dict(), **self.env, **extra} for row in rows]
        append_text(self.jsonl, "".join(json.dumps(record, default=str, allow_nan=False) + "\n"
                                        for record in records))
        header = not self.csv.exists() or self.csv.stat().st_size == 0
        columns = list(records[0]) if header else _csv_header(self.csv)
        frame = pd.DataFrame.from_records(records).reindex(columns=columns)
        append_text(self.csv, frame.to_csv(header=header, index=False))

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _finite(row: MetricRow) -> MetricRow:
    """A row as written: a measured NaN or infinity is an error row (no reader takes non-finite numbers)."""
    value, seconds = row.value, row.seconds
    if isinstance(value, float) and not math.isfinite(value):
        row = dataclasses.replace(row, value=None, status="error",
                                  error=(row.error + "; " if row.error else "") + f"measured a non-finite value ({value})")
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        row = dataclasses.replace(row, seconds=0.0)
    return row


def stem_file(stem: Path, extension: str) -> Path:
    """``<stem><extension>``; the stem may hold dots (``run.rank1``), which ``with_suffix`` would cut."""
    return stem.with_name(stem.name + extension)


def check_run_name(name: str) -> str:
    """A run name is a plain file stem: no directories, so results never land outside ``--out``."""
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name) or name.strip(".") == "":
        raise ValueError(f"run name {name!r} must be a plain file name (letters, digits, '.', '_', '-'; "
                         "no '/' or '..'); choose the folder with --out")
    return name


#: The most bytes a run adds to ``--name`` in a file name: a shard kept aside, ``<name>.rank99999.<stamp>-999.jsonl``.
LONGEST_SUFFIX = len(".rank99999") + len(".20261231-235959-999") + len(".jsonl")


def check_results_stem(stem: Path) -> None:
    """Fail before anything is measured if results cannot be written next to ``stem``.

    The folder is created; the name must leave room, within the file system's limit on a file
    name, for the longest suffix a run adds (:data:`LONGEST_SUFFIX`), so no write fails mid-run.
    """
    folder = stem.parent
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"cannot write results to {folder}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the results folder {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write results to {folder}: permission denied")
    check_name_fits(folder, re.sub(r"\.rank\d+$", "", stem.name))


def check_name_fits(folder: Path, name: str) -> None:
    """Refuse a run name that, with the suffixes a run adds, is longer than ``folder``'s file system allows."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    length = len(os.fsencode(name))
    if length + LONGEST_SUFFIX > limit:
        raise ValueError(f"run name of {length} bytes is too long: {folder} allows {limit} bytes per file name and "
                         f"a run adds up to {LONGEST_SUFFIX} (e.g. '.rank1.20261231-235959-2.jsonl' for a shard kept "
                         f"aside); choose a --name of at most {max(0, limit - LONGEST_SUFFIX)} bytes")


def check_output_file(path: Path) -> None:
    """Fail before anything is measured if a report file cannot be written at ``path``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write the report to {path}: it is a folder")
    check_results_stem(path)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"cannot write the report to {path}: permission denied")


def settings_differences(recorded: dict, current: dict, labels: tuple[str, str] = ("in the file", "now"),
                         ignore: tuple[str, ...] = VOLATILE_ENV) -> list[str]:
    """``key: recorded <label> , current <label>`` for every setting that differs (keys in ``ignore`` aside).

    ``--resume`` uses it to refuse a file measured otherwise; ``poolbench report A B`` to show how files differ.
    """
    differences = []
    for key, value in current.items():
        if key in ignore or key not in recorded:
            continue
        if str(recorded[key]) != str(value):
            differences.append(f"{key}: {recorded[key]} {labels[0]}, {value} {labels[1]}")
    return differences


def move_aside(*paths: Path) -> list[Path]:
    """Rename existing, non-empty files to ``<stem>.<timestamp>[-n]<suffix>``; return the new paths.

    The timestamp has one-second resolution, so a counter is added until no target exists: a
    third run within the same second never overwrites the first one's files (callers hold the
    stem's lock, so no other poolbench run picks the same name meanwhile).  All files of one
    move share one name, so ``x.<stamp>.jsonl`` and ``x.<stamp>.csv`` stay a pair.
    """
    present = [path for path in paths if path.exists() and path.stat().st_size > 0]
    for path in paths:
        if path not in present:
            path.unlink(missing_ok=True)
    if not present:
        return []
    base = _datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for counter in range(1, 10_000):
        stamp = base if counter == 1 else f"{base}-{counter}"
        targets = [path.with_name(f"{path.stem}.{stamp}{path.suffix}") for path in present]
        if not any(os.path.lexists(target) for target in targets):
            break
    else:  # pragma: no cover - ten thousand runs in one second
        raise ValueError(f"cannot keep {present[0]} aside: too many earlier runs named {base}; move some away")
    for path, target in zip(present, targets):
        path.replace(target)
    warnings.warn(f"the previous results were kept as {', '.join(map(str, targets))}", stacklevel=3)
    return targets


def _csv_header(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return next(csv.reader(handle), [])


def _results_file(path: Path) -> Path:
    candidates = [path] if path.suffix in (".jsonl", ".csv") else [stem_file(path, ".jsonl"), stem_file(path, ".csv")]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise ValueError(f"no results file at {path} (expected a .jsonl or .csv written by `poolbench run`)")


def read_rows(path: str | Path) -> pd.DataFrame:
    """Every valid row of a results file, with the cells of incomplete attempts dropped.

    Unreadable or invalid lines (a crash mid-write, garbage, a crafted line) are
    skipped with a warning naming the file, the line numbers and why; a file
    with no valid row is a ValueError naming the file.
    """
    return _frame(_complete_records(path))


def _complete_records(path: str | Path) -> list[dict]:
    candidate = _results_file(Path(path))
    read = read_records(candidate)
    read.warn_if_bad()
    if not read.records:
        unreadable = f" ({len(read.bad_lines)} unreadable lines)" if read.bad_lines else ""
        first = next(iter(read.reasons.values()), None)
        why = f"; line {next(iter(read.reasons))}: {first}" if first else ""
        raise ValueError(f"results file {candidate} holds no readable rows{unreadable}{why}")
    return complete_attempts(read.records)


def _frame(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records)
    for column in ROW_COLUMNS:  # rows written before a column existed
        if column not in frame.columns:
            frame[column] = None
    for column in ("layer", "error", "detail", "unit", "shape"):
        frame[column] = frame[column].fillna("").astype(str)
    for column in NUMERIC_COLUMNS:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.reset_index(drop=True)


def load_results(path: str | Path) -> pd.DataFrame:
    """Rows of a results file (``.jsonl`` or ``.csv``; a stem finds either), one attempt per cell and device.

    A resumed run may hold a cell twice (an error, then its retry); the measured
    attempt wins, among equals the later one (:func:`~poolbench.run.records.winning_attempts`,
    the merge's rule too).  A file merged from several hosts or device models keeps each
    one's cells (and baseline) apart.
    """
    return _frame(winning_attempts(_complete_records(path)))


def measured_cells(path: str | Path) -> set[CellKey]:
    """Cells already measured (every row ``ok`` or ``skipped``) in a results file, for ``--resume``.

    Errors are retried; so is a cell whose rows were cut short by a crash.
    """
    path = Path(path)
    path = path if path.suffix == ".jsonl" else stem_file(path, ".jsonl")
    if not path.exists() or path.stat().st_size == 0:
        return set()
    try:
        frame = load_results(path)
    except ValueError:  # nothing readable: measure everything again
        return set()
    done = frame.groupby(list(CELL_COLUMNS), sort=False)["status"].agg(lambda s: s.isin(("ok", "skipped")).all())
    return {CellKey(*(str(part) for part in cell)) for cell, ok in done.items() if ok}
