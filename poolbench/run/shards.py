"""Per-rank results shards and their merge into one results file.

Why shards: under torchrun every rank appends its cells to its own
``<stem>.rank<r>.jsonl`` (through its own :class:`~poolbench.run.results.ResultsWriter`
and lock), so no two processes ever write one file.  Merging rewrites
``<stem>.jsonl/.csv`` from the earlier merged file and every shard, with the
record layer's rules (:mod:`~poolbench.run.records`): complete attempts only
(a rank killed mid-cell leaves a cut attempt), one attempt per cell and
device — a measured attempt beats an error, a later one an earlier one.  Baseline cells stay once per (host, device): each device's ratios use
its own baseline.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

import pandas as pd

from .records import complete_attempts, read_records, settings_of, winning_attempts
from .results import RANK_VOLATILE, move_aside, settings_differences, stem_file
from .runlock import RunLock

__all__ = ["merge_shards", "move_shards_aside", "shard_stem", "shard_stems"]


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


def merge_shards(stem: Path, *, locked: bool = False) -> Path | None:
    """Rewrite ``<stem>.jsonl/.csv`` from the merged file and every shard; ``None`` when there is no shard.

    ``locked``: the caller already holds the stem's lock (a sweep's rank 0 holds it for its lifetime).
    Shards measured with other settings than the merged file (or the first shard) are refused, naming
    the difference: merging them would mix, say, batch-1 and batch-2 rows under one baseline.
    """
    shards = shard_stems(stem)
    if not shards:
        return None
    merged = stem_file(stem, ".jsonl")
    with contextlib.nullcontext() if locked else RunLock(stem):
        records: list[dict] = []
        reference: tuple[Path, dict] | None = None
        for source in [merged] + [stem_file(shard, ".jsonl") for shard in shards]:
            if not source.exists():
                continue
            read = read_records(source)
            read.warn_if_bad()
            if read.records:
                if reference is None:
                    reference = (source, read.records[0])
                else:
                    _check_same_settings(source, read.records[0], *reference)
            records += read.records
        kept = winning_attempts(complete_attempts(records))
        _write_atomically(merged, "".join(json.dumps(record, default=str) + "\n" for record in kept))
        frame = pd.DataFrame.from_records(kept)
        _write_atomically(stem_file(stem, ".csv"), frame.to_csv(index=False) if kept else "")
    return merged


def _check_same_settings(source: Path, record: dict, reference: Path, expected: dict) -> None:
    differences = settings_differences(settings_of(expected), settings_of(record), labels=(f"in {reference.name}", f"in {source.name}"),
                                       ignore=RANK_VOLATILE)
    if differences:
        raise ValueError(f"cannot merge {source}: it was measured with other settings than {reference} "
                         f"({'; '.join(differences)}); rerun every rank with the same command (move the odd "
                         "shard aside to keep it)")


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: a crash leaves the old file or the new one."""
    # mkstemp: an unpredictable name, created with O_EXCL (never an existing file, never through a link)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

