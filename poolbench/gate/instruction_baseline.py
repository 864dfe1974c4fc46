"""Stored instruction-count baselines: one JSON file per machine, torch version and CPU capability.

Instruction counts are exact but belong to one binary on one instruction set:
another torch build or another CPU capability (the vector ISA torch's kernels
dispatch to, ``torch.backends.cpu.get_cpu_capability()``; under valgrind at
most AVX2) runs different code.  So a baseline is only compared with a run
of the same key, and each key has its own file
``<dir>/instructions/<machine>-torch<version>-<capability>.json``.

A file that is empty, not JSON, not an instruction baseline, recorded
under another key (copied or renamed by hand), or crafted (not a regular
file, huge, deeply nested, a count that is not a positive integer) is refused with
:class:`BaselineError` naming the file: a gate that silently compares with
the wrong numbers is worse than one that fails.
"""
from __future__ import annotations

import json
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..measure import BenchConfig
from .baseline_file import BaselineError, positive_int, read_baseline_json
from .instructions import InstructionCount, InstructionRun

__all__ = ["BaselineError", "KIND", "baseline_key", "baseline_path", "load_baseline", "save_baseline",
           "candidate_baselines", "RECORD_COMMAND"]

KIND = "poolbench instruction counts"
FORMAT_VERSION = 1
SUBDIR = "instructions"
RECORD_COMMAND = "poolbench compare --metric instructions --save-baseline"




def machine() -> str:
    return f"{platform.system()}-{platform.machine()}"


def baseline_key(cpu_capability: str) -> dict:
    """The key a run is compared under: machine, torch version, and the measured process's CPU capability."""
    return {"machine": machine(), "torch": torch.__version__, "cpu_capability": cpu_capability}


def _file_stem(key: dict) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{key['machine']}-torch{key['torch']}-{key['cpu_capability']}")


def baseline_path(directory: str | Path, key: dict) -> Path:
    return Path(directory) / SUBDIR / f"{_file_stem(key)}.json"


def candidate_baselines(directory: str | Path) -> list[Path]:
    """Baselines for this machine and torch version (any capability): the run's capability is known only after it."""
    prefix = _file_stem({"machine": machine(), "torch": torch.__version__, "cpu_capability": ""})
    return sorted((Path(directory) / SUBDIR).glob(f"{prefix}*.json"))


def _config_identity(config: BenchConfig) -> dict:
    return {"batch": config.batch, "resolution": config.resolution, "threads": config.threads,
            "dtype": config.dtype, "seed": config.seed}


def load_baseline(path: str | Path, key: dict, config: BenchConfig) -> dict[tuple, InstructionCount]:
    """The counts stored in ``path``, checked to be an instruction baseline for ``key`` and ``config``.

    Read through the gates' validating loader (a regular file of sane size,
    sane nesting, finite numbers); every case's fields must have their types
    and every count must be an integer > 0.
    """
    path = Path(path)
    if not path.exists():
        raise BaselineError(f"no instruction baseline {path} for {_describe(key)}; record one with `{RECORD_COMMAND}`")
    data = read_baseline_json(path, RECORD_COMMAND)
    if not isinstance(data, dict) or data.get("kind") != KIND or data.get("version") != FORMAT_VERSION:
        raise BaselineError(f"{path} is not a poolbench instruction baseline (format {KIND!r} v{FORMAT_VERSION}); "
                            f"re-record it with `{RECORD_COMMAND}`")
    for name, expected in (("key", key), ("config", _config_identity(config))):
        if data.get(name) != expected:
            raise BaselineError(f"instruction baseline {path} was recorded for {name} {str(data.get(name))[:200]}, "
                                f"this run is {expected!r}; record a baseline for it with `{RECORD_COMMAND}`")
    cases = data.get("cases")
    if not isinstance(cases, list) or not cases:
        raise BaselineError(f"instruction baseline {path} holds no usable counts; re-record it with `{RECORD_COMMAND}`")
    counts = {}
    for number, case in enumerate(cases, start=1):
        try:
            count = _checked_case(case)
        except (KeyError, TypeError, ValueError) as exc:
            raise BaselineError(f"instruction baseline {path} has a malformed case #{number} "
                                f"({type(exc).__name__}: {exc}); re-record it with `{RECORD_COMMAND}`") from None
        counts[count.key] = count
    return counts


def _checked_case(case) -> InstructionCount:
    """One stored case, each field of its type: names are strings, layer, sizes and counts integers > 0."""
    if not isinstance(case, dict):
        raise TypeError(f"a case must be an object, got {str(case)[:80]}")
    for name in ("pooler", "tier", "pass"):
        if not isinstance(case[name], str):
            raise TypeError(f"{name} must be a string, got {case[name]!r}")
    if not isinstance(case["shape"], list) or not case["shape"]:
        raise TypeError(f"shape must be a list of sizes, got {str(case['shape'])[:80]}")
    for size in case["shape"]:
        positive_int(size, "a size in shape")
    positive_int(case["layer"], "layer")
    positive_int(case["instructions"], "instructions")
    positive_int(case["comparator_instructions"], "comparator_instructions")
    return InstructionCount.from_dict(case)


def save_baseline(run: InstructionRun, directory: str | Path, config: BenchConfig, *,
                  keep: Callable[[tuple], bool] | None = None) -> Path:
    """Write ``run``'s counts as the baseline for its key; returns the file.

    With ``keep``, the previous baseline's cases that this run did not measure
    and for which ``keep(key)`` is true are carried over (a refresh limited to
    ``--poolers``/``--tiers`` keeps the others).
    """
    key = baseline_key(run.environment["cpu_capability"])
    path = baseline_path(directory, key)
    counts: dict[tuple, InstructionCount] = {}
    if keep is not None and path.is_file():
        try:
            counts = {k: c for k, c in load_baseline(path, key, config).items() if keep(k)}
        except BaselineError:
            counts = {}  # a broken previous file is replaced, not merged
    counts.update(run.counts)
    document = {"kind": KIND, "version": FORMAT_VERSION, "key": key, "config": _config_identity(config),
                "cases": [count.as_dict() for count in _sorted(counts.values())]}
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed over: a reader never sees half a file, and whatever sits at the
    # path (a broken file, a FIFO that a plain write would block on) is replaced, not written into.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False) as handle:
        handle.write(json.dumps(document, indent=1) + "\n")
    os.replace(handle.name, path)
    return path


def _sorted(counts: Iterable[InstructionCount]) -> list[InstructionCount]:
    return sorted(counts, key=lambda c: (c.case.pooler, c.case.tier, c.case.pass_, c.case.layer))


def _describe(key: dict) -> str:
    return f"machine {key['machine']}, torch {key['torch']}, CPU capability {key['cpu_capability']}"
