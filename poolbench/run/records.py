"""The record layer of results files: which rows are valid, which attempts are complete, which attempt wins.

Why one module: a results file (``<stem>.jsonl/.csv``) and the per-rank
shards of a torchrun launch hold the same rows, and ``report``, ``--resume``
and the merge must agree on them.  Every reader goes through
:func:`read_records`: a row whose fields have the wrong type (a list where a
name belongs, ``"cell_rows": "two"``, a negative batch) is skipped and
counted with its file and line, exactly like a line torn by a crash, so one
crafted or damaged line never crashes a report or blocks a resume.  Then one
rule decides completeness (an attempt has every row it announced in
``cell_rows``) and one rule the winner per cell and device (a measured
attempt beats a failed one; among equals the one read last).
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from ..metrics import CellKey, MetricRow
from .linefile import ReadResult, read_csv_records, read_jsonl_records

__all__ = ["CELL_COLUMNS", "DEVICE_COLUMNS", "MEASURED", "ROW_COLUMNS", "complete_attempts", "read_records",
           "settings_of", "winning_attempts"]

CELL_COLUMNS = CellKey._fields
ROW_COLUMNS = tuple(MetricRow.__dataclass_fields__)
#: What makes a line a poolbench row: its cell, what it measured and how that went (the rest is typed if present).
REQUIRED_COLUMNS = CELL_COLUMNS + ("quantity", "status")
#: Where a row was measured: each (host, device model) keeps its own attempt of a cell (and its own baseline).
DEVICE_COLUMNS = ("host", "device_name")
#: Statuses of a cell that needs no new measurement.
MEASURED = ("ok", "skipped")
STATUSES = ("ok", "skipped", "error")
#: Fields that hold a number (or nothing); a CSV gives them as text.
NUMBER_FIELDS = ("value", "seconds", "load_avg")
#: Fields that hold a whole number, with their least allowed value.
COUNT_FIELDS = {"cell_rows": 1, "batch": 1, "resolution": 1, "threads": 1, "rank": 0}


def read_records(path: Path) -> ReadResult:
    """The valid rows of a ``.jsonl`` or ``.csv`` results file or shard; invalid ones skipped with line and why.

    Text fields stay text; numbers are finite numbers (CSV text converted); a file that is not a
    regular file is a ValueError naming it.
    """
    path = Path(path)
    csv_file = path.suffix == ".csv"
    read = read_csv_records(path) if csv_file else read_jsonl_records(path)
    valid = ReadResult(read.path, bad_lines=list(read.bad_lines), reasons=dict(read.reasons))
    for record, line in zip(read.records, read.lines):
        try:
            valid.records.append(_checked(record, csv_file))
            valid.lines.append(line)
        except ValueError as exc:
            valid.skip(line, str(exc))
    valid.bad_lines.sort()
    return valid


def _checked(record: dict, from_csv: bool) -> dict:
    """``record`` with typed fields, or a ValueError saying which field is wrong."""
    missing = [column for column in REQUIRED_COLUMNS if column not in record]
    if missing:
        raise ValueError(f"not a poolbench row (no {', '.join(missing[:4])})")
    checked = {}
    for key, value in record.items():
        if not isinstance(key, str):
            raise ValueError("a field name that is not text")
        if from_csv:
            value = _from_csv_text(key, value)
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"field {key!r} holds a {type(value).__name__}, not a value")
        if key in NUMBER_FIELDS or key in COUNT_FIELDS:
            value = _number(key, value)
        elif key in CELL_COLUMNS or key in ("quantity", "status", "attempt"):
            if not isinstance(value, str) and not (key == "layer" and value is None):
                raise ValueError(f"field {key!r} holds {value!r}, not text")
        checked[key] = value
    if checked["status"] not in STATUSES:
        raise ValueError(f"status {checked['status']!r} is none of {', '.join(STATUSES)}")
    if checked.get("layer") is None:
        checked["layer"] = ""
    return checked


def _from_csv_text(key: str, text: str):
    if key in NUMBER_FIELDS or key in COUNT_FIELDS:
        if text == "":
            return None
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"field {key!r} holds {text[:40]!r}, not a number") from None
    return text


def _number(key: str, value):
    if value is None or (value == "" and key not in COUNT_FIELDS):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"field {key!r} holds {str(value)[:40]!r}, not a number")
    if not math.isfinite(value):
        raise ValueError(f"field {key!r} holds a non-finite number")
    if key in COUNT_FIELDS:
        if float(value) != int(value) or value < COUNT_FIELDS[key]:
            raise ValueError(f"field {key!r} holds {value!r}, not a whole number >= {COUNT_FIELDS[key]}")
        return int(value)
    return value


#: Fields a writer adds to each row besides the measurement and its environment.
ATTEMPT_FIELDS = ("attempt", "cell_rows")


def settings_of(record: dict) -> dict:
    """The environment and settings part of a row (what ``--resume`` and the merge compare), the measurement aside."""
    return {key: value for key, value in record.items() if key not in ROW_COLUMNS and key not in ATTEMPT_FIELDS}


def _row_identity(record: dict) -> tuple:
    return (record.get("attempt"), CellKey.of(record), record.get("quantity"))


def complete_attempts(records: list[dict]) -> list[dict]:
    """Rows of attempts that have every row they announced (``cell_rows``), each row once.

    A crash mid-cell leaves an attempt short; shards and the merged file repeat each other's rows.
    Rows of files written before ``cell_rows`` existed count as complete.
    """
    unique = list({_row_identity(record): record for record in records}.values())
    sizes = Counter(record.get("attempt") for record in unique)
    return [record for record in unique
            if record.get("cell_rows") is None or sizes[record.get("attempt")] == record["cell_rows"]]


def _place(record: dict) -> tuple:
    return (CellKey.of(record), *(str(record.get(column) or "") for column in DEVICE_COLUMNS))


def winning_attempts(records: list[dict]) -> list[dict]:
    """Per cell and device (host, device model), the rows of one attempt: measured over failed, then the last read.

    Rows without an ``attempt`` (an old file) all stay.
    """
    measured: dict[str, bool] = {}
    for record in records:
        attempt = record.get("attempt")
        measured[attempt] = measured.get(attempt, True) and record.get("status") in MEASURED
    best: dict[tuple, tuple[bool, int, str]] = {}
    for order, record in enumerate(records):
        attempt = record.get("attempt")
        if attempt is None:
            continue
        candidate = (measured[attempt], order, attempt)
        place = _place(record)
        if place not in best or candidate[:2] >= best[place][:2]:
            best[place] = candidate
    chosen = {(place, attempt) for place, (_, _, attempt) in best.items()}
    return [record for record in records
            if record.get("attempt") is None or (_place(record), record.get("attempt")) in chosen]
