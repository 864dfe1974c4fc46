"""Line-oriented result files that survive a crash: atomic appends, torn-tail repair, tolerant reading.

Why: a run can be killed at any moment (out of memory, SIGKILL, a power cut).
A record is one line, and a cell's lines go to the file in a single
``write`` on an ``O_APPEND`` descriptor, so a crash leaves at worst one cut
line at the very end.  Before appending again, that torn tail is cut off
(with a warning saying how many bytes), so a new record never glues onto a
fragment; readers skip and count any line they cannot parse instead of failing
on it, and always name the file and line.
"""
from __future__ import annotations

import csv
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ReadResult", "append_text", "read_csv_records", "read_jsonl_records", "repair_torn_tail"]


@dataclass
class ReadResult:
    """Records read from a file, and the 1-based line numbers that could not be read."""

    path: Path
    records: list[dict] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)

    def warn_if_bad(self) -> None:
        if self.bad_lines:
            shown = ", ".join(str(n) for n in self.bad_lines[:10]) + (" …" if len(self.bad_lines) > 10 else "")
            warnings.warn(f"{self.path}: skipped {len(self.bad_lines)} unreadable line(s) (line {shown}): "
                          "cut short by a crash or not written by poolbench", stacklevel=3)


def repair_torn_tail(path: Path) -> int:
    """Cut a last line that lacks its newline (a write cut short); return the bytes dropped."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return 0
        keep = _end_of_last_full_line(handle, size)
        handle.truncate(keep)
    dropped = size - keep
    warnings.warn(f"{path}: dropped a torn last line ({dropped} bytes) left by an interrupted write",
                  stacklevel=2)
    return dropped


def _end_of_last_full_line(handle, size: int) -> int:
    """Offset just past the last newline in the file (0 if there is none)."""
    block = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - block)
        handle.seek(start)
        chunk = handle.read(end - start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            return start + index + 1
        end = start
    return 0


def append_text(path: Path, text: str) -> None:
    """Append ``text`` (whole lines) with one ``write`` on an O_APPEND descriptor, then flush to the kernel."""
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = 0
        while written < len(data):  # regular files take it in one call; loop for the rare partial write
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)


def read_jsonl_records(path: Path) -> ReadResult:
    """Every JSON-object line of ``path``; blank lines are ignored, unreadable ones counted."""
    result = ReadResult(Path(path))
    with result.path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                result.bad_lines.append(number)
                continue
            if isinstance(record, dict) and raw.endswith(b"\n"):
                result.records.append(record)
            else:  # a JSON scalar, or a last line without its newline (cut exactly at a value boundary)
                result.bad_lines.append(number)
    return result


def read_csv_records(path: Path) -> ReadResult:
    """Rows of a CSV file as dicts; rows with the wrong number of fields or cut short are counted, not read."""
    result = ReadResult(Path(path))
    text = result.path.read_text(encoding="utf-8", errors="replace")
    complete = text.endswith("\n")
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        return result
    rows = [(row, reader.line_num) for row in reader]  # line_num: where the row ends (fields may hold newlines)
    for index, (row, number) in enumerate(rows):
        last = index == len(rows) - 1
        if len(row) != len(header) or (last and not complete):
            result.bad_lines.append(number)
            continue
        result.records.append(dict(zip(header, row)))
    return result
