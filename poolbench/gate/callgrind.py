"""Counting instructions with valgrind's callgrind: the client requests, the command line, the dump files.

Why instructions: callgrind counts the instructions a process executes on a
simulated CPU, so the same binary on the same input gives the same count
whatever else the machine is doing — unlike seconds on a shared CI runner.

Why one process with instrumentation off by default: callgrind slows the code
it instruments about fifty-fold, and importing torch alone would then take
minutes.  The process starts with instrumentation and collection off
(``--instr-atstart=no --collect-atstart=no``), imports and warms up
uninstrumented, switches instrumentation on once
(``CALLGRIND_START_INSTRUMENTATION``) and then, for every measured call,
collects only while that call runs and dumps the count under the call's label
(``CALLGRIND_DUMP_STATS_AT``).  torch's own ``torch._C._valgrind_toggle`` only
switches collection, so a tiny extension (``csrc/callgrind_requests.cpp``,
built with torch's C++ extension toolchain like the ``cpp`` DPP tier) exposes
the requests.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

import torch

from ..toolchain import cache_root, load_extension

__all__ = ["DUMP_PREFIX", "callgrind_command", "client_requests", "read_dumps", "unavailable_reason"]

SOURCE = Path(__file__).resolve().parent / "csrc" / "callgrind_requests.cpp"
#: Dump files are ``<out dir>/DUMP_PREFIX.<n>``, one per measured call.
DUMP_PREFIX = "callgrind.out"
#: What every measuring process runs under; see the module docstring.  Only the
#: function-level totals are read, so line and instruction-level data are not written.
VALGRIND_OPTIONS = ("--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                    "--dump-line=no", "--dump-instr=no", "--compress-strings=no", "--compress-pos=no")


def _include_dirs() -> list[Path]:
    valgrind = shutil.which("valgrind")
    prefixes = [Path(sys.prefix), Path("/usr"), Path("/usr/local")]
    if valgrind:
        prefixes.insert(0, Path(os.path.realpath(valgrind)).parent.parent)
    return [prefix / "include" for prefix in prefixes]


@functools.cache
def _header_dir() -> Path | None:
    """The include directory holding ``valgrind/callgrind.h`` (valgrind's own prefix first)."""
    return next((d for d in _include_dirs() if (d / "valgrind" / "callgrind.h").is_file()), None)


def unavailable_reason() -> str | None:
    """Why instructions cannot be counted here (no valgrind, no callgrind.h, no compiler), or ``None``."""
    if sys.platform != "linux":
        return f"instruction counting needs valgrind on Linux, this is {sys.platform}"
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (e.g. apt-get install valgrind)"
    if _header_dir() is None:
        searched = ", ".join(str(d / "valgrind" / "callgrind.h") for d in _include_dirs())
        return f"valgrind's client-request header is missing (looked for {searched}); install valgrind's headers"
    if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")):
        return "no C++ compiler found (set CXX or install g++) to build the callgrind client-request extension"
    return None


def _build_directory() -> Path:
    """Cached per torch/Python version and source tree, like the ``cpp`` DPP tier's library."""
    tag = (f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
           f"-src{hashlib.sha1(str(SOURCE).encode()).hexdigest()[:8]}").replace("+", "_")
    path = cache_root() / "torch_extensions" / f"callgrind-{tag}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def client_requests():
    """The ``poolbench_callgrind`` module: ``start_instrumentation()``, ``count(fn, label)``, ...

    Built on first use (seconds: plain CPython, no torch headers) and cached.
    Outside valgrind every request is a no-op, so building it in the parent
    process first keeps the compiler out of the measured process.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    return load_extension(
        name="poolbench_callgrind", sources=[str(SOURCE)], extra_include_paths=[str(_header_dir())],
        extra_cflags=["-O2"], build_directory=str(_build_directory()),
    )


def callgrind_command(argv: list[str], out_dir: str | Path) -> list[str]:
    """``argv`` run under callgrind, its dumps written to ``out_dir/DUMP_PREFIX.<n>``."""
    return ["valgrind", *VALGRIND_OPTIONS, f"--callgrind-out-file={Path(out_dir) / DUMP_PREFIX}", *argv]


_DESC = re.compile(r"^desc: Trigger: Client Request: (.*)$")
_TOTAL = re.compile(r"^(?:totals|summary): (\d+)")


def read_dumps(out_dir: str | Path) -> dict[str, int]:
    """``{label: instructions}`` from the dumps in ``out_dir`` (label from ``CALLGRIND_DUMP_STATS_AT``).

    The final dump valgrind writes at exit has no client-request label and is
    ignored.  A label dumped twice raises ``ValueError``: labels name cases.
    """
    counts: dict[str, int] = {}
    for path in sorted(Path(out_dir).glob(f"{DUMP_PREFIX}*")):
        label, total = None, None
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if label is None and (match := _DESC.match(line)):
                    label = match.group(1).strip()
                elif match := _TOTAL.match(line):
                    total = int(match.group(1))
                    break
        if label is None:
            continue
        if total is None:
            raise ValueError(f"callgrind dump {path} has no totals/summary line")
        if label in counts:
            raise ValueError(f"callgrind dump label {label!r} appears twice (in {path})")
        counts[label] = total
    return counts
