"""Reading a stored baseline safely: the one loader both gates read their baselines through.

A baseline decides whether a gate passes, and it lives in a folder anyone
can write to (a checkout, a CI cache).  So what is read is first checked to
be something a gate can trust, and anything else is refused with
:class:`BaselineError` naming the file and the command that records a fresh
baseline, never a hang, a traceback or an out-of-memory:

* only a regular file is read (a FIFO would block the gate forever, a
  symlink to ``/dev/zero`` would read until memory runs out): the file is
  opened without blocking and checked on the open descriptor, so it cannot
  be swapped between the check and the read;
* at most :data:`MAX_BYTES` are read;
* nesting deeper than :data:`MAX_DEPTH` is refused before parsing (a crafted
  ``[[[[...`` would otherwise end in a ``RecursionError``);
* numbers must be finite (``NaN``/``Infinity`` and ``1e999`` are refused:
  a NaN ratio compares as "unchanged" with anything) and integers of sane
  length;
* :func:`positive_number` and :func:`positive_int` check the fields each
  gate's format reads.
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from ..run.linefile import parse_json

__all__ = ["BaselineError", "MAX_BYTES", "MAX_DEPTH", "positive_int", "positive_number", "read_baseline_json"]

#: Larger than any real baseline (the time gate's full baseline is about 0.6 MB).
MAX_BYTES = 64 * 2**20
#: A baseline nests about six levels deep; anything near this is crafted.
MAX_DEPTH = 64


class BaselineError(ValueError):
    """The stored baseline cannot be compared with (unreadable, empty, foreign, crafted): the gate fails, exit 1."""


def refuse(path: Path | str, problem: str, record_command: str) -> BaselineError:
    """The one-line refusal: which file, what is wrong, what to do."""
    return BaselineError(f"baseline {path} {problem}; restore it from git or record a fresh one with "
                         f"`{record_command}`")


def read_baseline_json(path: str | Path, record_command: str, *, max_bytes: int = MAX_BYTES) -> Any:
    """The parsed JSON of ``path`` after the checks in the module docstring; :class:`BaselineError` otherwise."""
    path = Path(path)
    text = _read_regular_file(path, record_command, max_bytes)
    if not text.strip():
        raise refuse(path, "is empty", record_command)
    try:
        return parse_json(text, max_depth=MAX_DEPTH, max_bytes=max_bytes)
    except json.JSONDecodeError as exc:
        raise refuse(path, f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); truncated or "
                     "not written by poolbench", record_command) from None
    except ValueError as exc:
        raise refuse(path, f"holds {exc}", record_command) from None


def _read_regular_file(path: Path, record_command: str, max_bytes: int) -> str:
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise refuse(path, f"cannot be read ({exc.strerror or exc})", record_command) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refuse(path, "is not a regular file (a FIFO, device or folder)", record_command)
        if info.st_size > max_bytes:
            raise refuse(path, f"is {info.st_size} bytes, more than the {max_bytes} a baseline may have",
                         record_command)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise refuse(path, f"cannot be read ({exc.strerror or exc})", record_command) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew while being read
        raise refuse(path, f"is more than the {max_bytes} bytes a baseline may have", record_command)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse(path, "is not UTF-8 text", record_command) from None


def positive_number(value: Any, what: str) -> float:
    """``value`` if it is a finite number > 0 (not a bool, not a string); ``ValueError`` naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def positive_int(value: Any, what: str) -> int:
    """``value`` if it is an integer > 0 (not a bool, not a float); ``ValueError`` naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be an integer > 0, got {value!r}")
    return value
