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
import errno
import io
import json
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ReadResult", "append_text", "check_regular_file", "open_no_follow", "parse_json", "parse_json_line", "read_csv_records",
           "read_jsonl_records", "repair_torn_tail"]

#: A result line is one flat object; anything nested deeper than this is not poolbench's and is not parsed
#: (a 200,000-deep line would exhaust the parser's recursion).
MAX_DEPTH = 32
#: Digits of the longest integer a line may hold (a 5,000-digit one is refused by Python's int parser anyway).
MAX_INT_DIGITS = 30
#: Longest line read (a result row is well under 64 KiB; a longer line is garbage, not a record).
MAX_LINE_BYTES = 8 << 20
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


class _Unreadable(ValueError):
    """Why a line is not a record (the reason goes to the warning naming its line)."""


@dataclass
class ReadResult:
    """Records read from a file, and the 1-based line numbers that could not be read."""

    path: Path
    records: list[dict] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # line -> why it was skipped, where more than "unreadable"
    lines: list[int] = field(default_factory=list)  # the line number of each record

    def skip(self, line: int, reason: str | None = None) -> None:
        self.bad_lines.append(line)
        if reason:
            self.reasons[line] = reason

    def warn_if_bad(self) -> None:
        if self.bad_lines:
            shown = ", ".join(str(n) for n in self.bad_lines[:10]) + (" …" if len(self.bad_lines) > 10 else "")
            first = next((f"; line {n}: {self.reasons[n]}" for n in self.bad_lines if n in self.reasons), "")
            warnings.warn(f"{self.path}: skipped {len(self.bad_lines)} unreadable line(s) (line {shown}): "
                          f"cut short by a crash or not written by poolbench{first}", stacklevel=3)


def repair_torn_tail(path: Path) -> int:
    """Cut a last line that lacks its newline (a write cut short); return the bytes dropped."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with os.fdopen(open_no_follow(path, os.O_RDWR), "rb+") as handle:
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


def open_no_follow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (ValueError naming it).

    In a shared, world-writable ``--out`` anyone may plant ``<name>.jsonl -> ~/.bashrc``; a run
    must not append to, truncate or lock the link's target.
    """
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link; poolbench writes only files it owns there: remove the "
                             "link or choose another --out") from None
        raise


def append_text(path: Path, text: str) -> None:
    """Append ``text`` (whole lines) with one ``write`` on an O_APPEND descriptor, then flush to the kernel."""
    data = text.encode("utf-8")
    fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        written = 0
        while written < len(data):  # regular files take it in one call; loop for the rare partial write
            written += os.write(fd, data[written:])
    except OSError as exc:  # disk full, quota, a file made immutable: say which file
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(fd)


def check_regular_file(path: Path) -> Path:
    """``path`` if it is a regular file; a ValueError naming it otherwise (a FIFO would hang the reader,
    ``/dev/zero`` would fill the memory)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ValueError(f"no file at {path}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is not a regular file (a results file is one written by `poolbench run`)")
    return Path(path)


def parse_json(data: bytes | str, *, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_LINE_BYTES):
    """One JSON value from a file poolbench wrote (a results line, a shard row, a gate baseline).

    The one guarded parser of every reader: more than ``max_bytes``, nesting deeper than ``max_depth``
    (a 200,000-deep value would exhaust the parser's recursion), integers longer than
    :data:`MAX_INT_DIGITS` digits and ``NaN``/``Infinity`` (or a float that overflows to it) raise
    :class:`ValueError` saying which; broken syntax raises :class:`json.JSONDecodeError` (line, column).
    """
    data = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    if len(data) > max_bytes:
        raise _Unreadable(f"{len(data)} bytes, more than the {max_bytes} allowed")
    if data.count(b"[") + data.count(b"{") > max_depth and (depth := _depth(data)) > max_depth:
        raise _Unreadable(f"a value nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(data, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite_float)
    except RecursionError:  # pragma: no cover - the depth scan comes first
        raise _Unreadable(f"a value nested more than {max_depth} levels deep") from None
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"not UTF-8 text ({str(exc)[:80]})") from None


def parse_json_line(line: bytes | str):
    """One line of a results file or shard (:func:`parse_json` with the line limits); ValueError says why not."""
    try:
        return parse_json(line)
    except json.JSONDecodeError as exc:
        raise _Unreadable(f"not JSON ({str(exc)[:80]})") from None


def _depth(data: bytes) -> int:
    """Deepest bracket nesting outside strings."""
    depth = deepest = 0
    for char in _JSON_STRING.sub(b"", data):
        if char in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in b"]}":
            depth -= 1
    return deepest


def _no_constant(name: str):
    raise _Unreadable(f"a non-finite number ({name})")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Unreadable(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Unreadable(f"a number out of range ({text[:40]})")
    return value


def read_jsonl_records(path: Path) -> ReadResult:
    """Every JSON-object line of ``path``; blank lines are ignored, unreadable ones counted (with why)."""
    result = ReadResult(check_regular_file(path))
    with result.path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                record = parse_json_line(line)
            except ValueError as exc:
                result.skip(number, str(exc) if isinstance(exc, _Unreadable) else None)
                continue
            if isinstance(record, dict) and raw.endswith(b"\n"):
                result.records.append(record)
                result.lines.append(number)
            else:  # a JSON scalar, or a last line without its newline (cut exactly at a value boundary)
                result.skip(number)
    return result


def read_csv_records(path: Path) -> ReadResult:
    """Rows of a CSV file as dicts; rows with the wrong number of fields or cut short are counted, not read."""
    result = ReadResult(check_regular_file(path))
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
            result.skip(number)
            continue
        result.records.append(dict(zip(header, row)))
        result.lines.append(number)
    return result
