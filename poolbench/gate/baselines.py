"""Time-gate baseline storage: pytest-benchmark's own ``FileStorage``, reading and merging baselines.

A time baseline is a pytest-benchmark JSON document stored exactly where
``pytest --benchmark-save`` would put it, ``<dir>/<machine id>/NNNN_<name>.json``,
numbered by pytest-benchmark's own storage, so ``--benchmark-compare`` and
``pytest-benchmark compare`` read it too.  A new baseline is a new number;
older files are never deleted (they are the user's history; the newest one
is used).
"""
from __future__ import annotations

import json
import logging
import re
import statistics
from pathlib import Path
from typing import Callable, Sequence

from ..measure.config import BenchConfig
from .results import CaseResult

DEFAULT_BASELINE_DIR = Path("benchmarks") / "baselines"
_LOG = logging.getLogger(__name__)


def machine_id() -> str:
    from pytest_benchmark.utils import get_machine_id

    return get_machine_id()


def _storage(directory: str | Path, machine: str | None):
    from pytest_benchmark.storage.file import FileStorage

    return FileStorage(Path(directory), _LOG, default_machine_id=machine)


def _numbered(files, name: str) -> list[tuple[int, Path]]:
    pattern = re.compile(rf"^(\d{{4}})_{re.escape(name)}\.json$")
    return [(int(match.group(1)), path) for path in files if (match := pattern.match(path.name))]


def find_baseline(directory: str | Path, name: str) -> Path | None:
    """The newest ``NNNN_<name>.json`` under ``directory/<machine id>/``; this machine's folder first.

    Ratios travel between machines, so a baseline saved under another machine
    id is used when this machine has none.
    """
    if not Path(directory).is_dir():
        return None
    here = machine_id()
    found = [(path.parent.name == here, number, path)
             for number, path in _numbered(_storage(directory, None).query(f"*/[0-9][0-9][0-9][0-9]_{name}"), name)]
    return max(found)[2] if found else None


def save_baseline(data: dict, directory: str | Path, name: str, *, previous: dict | None = None,
                  keep: Callable[[dict], bool] | None = None) -> Path:
    """Save ``data`` through pytest-benchmark's storage as ``directory/<machine id>/NNNN_<name>.json``.

    ``previous``'s benchmarks for which ``keep(bench)`` is true and that
    ``data`` does not measure again are carried over (a partial refresh with
    ``--poolers``/``--tiers`` keeps the other poolers' ratios).  Nothing is
    deleted: the number grows, and the newest file is the baseline.
    """
    data = json.loads(json.dumps(data))
    for bench in data.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)  # raw rounds: as --benchmark-save stores them, without
    if previous is not None and keep is not None:
        measured = {b.get("fullname") for b in data["benchmarks"]}
        carried = [b for b in previous.get("benchmarks", []) if b.get("fullname") not in measured and keep(b)]
        data["benchmarks"] = sorted(data["benchmarks"] + carried, key=lambda b: b.get("fullname", ""))
    storage = _storage(directory, machine_id())
    before = {path for _, path in _numbered(storage.query(f"[0-9][0-9][0-9][0-9]_{name}"), name)}
    storage.save(data, name)
    saved = [(number, path) for number, path in _numbered(storage.query(f"[0-9][0-9][0-9][0-9]_{name}"), name)
             if path not in before]
    if len(saved) != 1:
        raise RuntimeError(f"pytest-benchmark's storage did not write one new {name} baseline under {storage}")
    return saved[0][1]


def merge_runs(documents: Sequence[dict]) -> dict:
    """One pytest-benchmark document whose ratios are the per-case medians over several runs.

    A baseline is compared with every future run, so its own noise counts
    each time; the median of a few runs (``--save-baseline --repeat 3``)
    takes most of it out.  Absolute stats are the first run's; each
    benchmark's ``extra_info["ratio_runs"]`` keeps the individual ratios.
    """
    if not documents:
        raise ValueError("merge_runs needs at least one pytest-benchmark document")
    merged = json.loads(json.dumps(documents[0]))
    others = [{b.get("fullname"): b for b in doc.get("benchmarks", [])} for doc in documents[1:]]
    for bench in merged.get("benchmarks", []):
        info = bench.get("extra_info") or {}
        if info.get("ratio") is None:
            continue
        ratios = [info["ratio"]] + [o[bench["fullname"]]["extra_info"]["ratio"] for o in others
                                    if bench.get("fullname") in o and o[bench["fullname"]]["extra_info"].get("ratio")]
        info["ratio_runs"] = ratios
        info["ratio"] = statistics.median(ratios)
    return merged


def config_mismatch(baseline: dict[tuple, CaseResult], config: BenchConfig) -> str | None:
    """Why the baseline's ratios cannot be compared with a run under ``config`` (None if they can)."""
    mine = config.identity()
    for result in baseline.values():
        theirs = result.config
        diffs = [f"{k}={theirs[k]!r} (this run: {mine[k]!r})" for k in mine if k in theirs and theirs[k] != mine[k]]
        return "the baseline was measured with " + ", ".join(diffs) if diffs else None
    return None


def baseline_name(config: BenchConfig) -> str:
    """Default baseline name: the device plus whatever differs from the default config.

    So ``--resolution 112`` or ``--dtype bfloat16`` runs find (and save) their
    own baseline instead of comparing ratios measured on other shapes.
    """
    default = BenchConfig(device=config.device)
    parts = [config.device]
    if config.dtype != default.dtype:
        parts.append(config.dtype)
    for field_name, tag in (("batch", "b"), ("resolution", "r"), ("threads", "t")):
        if getattr(config, field_name) != getattr(default, field_name):
            parts.append(f"{tag}{getattr(config, field_name)}")
    if config.clock != default.clock:
        parts.append(config.clock)
    return "-".join(parts)
