"""One rank of ``torchrun … -m poolbench run``: claim units of work, measure them into a shard, merge at the end.

Work is handed out dynamically: every rank orders the same list of units
(one network × one pooler, all its tiers, metrics and layers) by estimated
cost, largest first, and takes the next one from an atomic counter in the
c10d store whenever it is free, so a slow unit never leaves the other ranks
idle.  Before its first unit of a network a rank measures that network's
max-pool baseline on its own device (unless its shard already has it): a
ratio is never formed between two devices.  Rank 0 waits at the finish
line (a rank silent for the timeout counts as dead), merges the shards into
``<stem>.jsonl`` and lists the cells nobody measured (the caller renders the report).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass

from .. import metrics as metrics_module
from .. import registry
from ..measure.subject import torch_threads
from ..metrics import CellKey
from .distributed import (Launch, RankStore, available_cores, cpu_threads, device_healthy, exit_if_told, rank_device,
                          settings_if_told)
from ..models import split_placement
from .records import read_records
from .results import (RANK_VOLATILE, ResultsWriter, check_results_stem, load_results, measured_cells,
                      move_aside, settings_differences, stem_file)
from .runner import RunConfig, RunResult, grid_cells, measure_groups, plan, plan_network
from .runlock import RunLock
from .shards import merge_shards, move_shards_aside, shard_stem

__all__ = ["PER_RANK_FIELDS", "Unit", "launch_settings", "missing_cells", "run_rank", "units"]

#: Multiply-accumulates per 224² image in GMACs (torchvision's model cards): only to order work largest first.
GMACS_224 = {"vgg16": 15.47, "resnet50": 4.09, "resnet101": 7.80}


@dataclass(frozen=True)
class Unit:
    """What a rank claims at once: one pooler (``None``: the baseline alone) in one network."""

    model: str
    pooler: str | None
    cost: float


def units(config: RunConfig) -> list[Unit]:
    """Every unit of the run, the costliest first (network size × tiers measured); ties keep the grid order."""
    poolers = list(config.poolers) if config.poolers is not None else registry.names()
    work = []
    for model in config.models:
        size = GMACS_224.get(split_placement(model)[0], 1.0) * config.batch * (config.resolution / 224) ** 2
        for pooler in poolers or [None]:
            work.append(Unit(model, pooler, size * _tier_count(pooler, config)))
    return sorted(work, key=lambda unit: -unit.cost)


def _tier_count(pooler: str | None, config: RunConfig) -> int:
    if pooler is None or pooler not in registry.names():
        return 1
    registered = registry.tiers(pooler)
    if config.tiers is None:
        return max(1, sum(registry.left_out_reason(tier) is None for tier in registered))
    return max(1, sum(tier in registered for tier in config.tiers) + ("fastest" in config.tiers))


def run_rank(config: RunConfig, launch: Launch) -> RunResult:
    """This rank's part of the run; rank 0 also merges the shards and lists the cells nobody measured.

    Rank 0 holds the results stem's lock from its preparation to the end of the merge, so no other
    run (a single-process ``--resume`` on the same name, say) writes the merged file meanwhile.
    """
    config = dataclasses.replace(config, **settings_if_told(launch)) if settings_if_told(launch) else config
    check_results_stem(config.stem)  # --out is created before anything locks a file in it
    device = rank_device(config.device, launch)
    threads = config.threads
    if threads is None and device == "cpu":
        threads = cpu_threads(available_cores(), launch.local_world_size)
    # torchrun --max-restarts starts the command again after a failure: it resumes, never starts over
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    config = dataclasses.replace(config, device=device, threads=threads, resume=config.resume or restarted)
    lock = None
    try:
        with torch_threads(threads):
            store = RankStore(launch, config.run_name, config.rank_timeout_s)
            settings = launch_settings(config)
            if launch.rank == 0:
                store.set("settings", json.dumps(settings))  # first: the others compare before anything else
                lock, moved = _prepare(config, store)
            else:
                moved = []
            store.wait("prepared")
            _compare_settings(store, launch, settings)
            store.mark_arrived("start")
            store.wait_for_all("start", starting=True)
            _refuse_if_any_differs(store, launch)
            shard, counts = _measure_units(config, launch, store)
            store.mark_arrived("finish")
            if launch.rank != 0:
                return RunResult(stem_file(shard, ".jsonl"), stem_file(shard, ".csv"), None, **counts)
            dead = store.wait_for_all("finish")
            if dead:
                print(f"poolbench run: rank(s) {', '.join(map(str, dead))} did not finish (died, or silent for "
                      f"{config.rank_timeout_s:g} s); merging what the others measured", file=sys.stderr)
            return _merge(config, counts, moved)
    finally:
        if lock is not None:
            lock.release()


#: RunConfig fields that belong to one rank (its GPU, its share of the cores, where its host keeps files, how
#: long it waits); every other field, present or added later, is a setting all ranks of a launch must share.
PER_RANK_FIELDS = ("device", "threads", "out", "name", "resume", "rank_timeout_s")


def launch_settings(config: RunConfig) -> dict[str, str]:
    """What every rank of one launch must agree on: each environment column but where it runs, and the grid.

    Generic on purpose: every field of the rows' environment and of :class:`RunConfig` counts, except
    :data:`~poolbench.run.results.RANK_VOLATILE` and :data:`PER_RANK_FIELDS`, so a new setting is compared
    without being listed here.  "Every registered pooler/metric" is spelled out: hosts may load other plugins.
    """
    settings = {key: str(value) for key, value in config.environment().items() if key not in RANK_VOLATILE}
    resolved = {"poolers": config.poolers if config.poolers is not None else tuple(registry.names()),
                "metrics": config.metrics if config.metrics is not None else tuple(metrics_module.registered())}
    for spec in dataclasses.fields(config):
        if spec.name not in PER_RANK_FIELDS:
            value = resolved.get(spec.name, getattr(config, spec.name))
            settings[f"--{spec.name}"] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return settings


def _compare_settings(store: RankStore, launch: Launch, own: dict[str, str]) -> None:
    """Compare this rank's settings with rank 0's; a difference is published (the start line still is reached)."""
    published = json.loads(store.get("settings"))
    differences = settings_differences(published, own, labels=("on rank 0", f"on rank {launch.rank}"), ignore=())
    differences += [f"{key}: {published[key]} on rank 0, not set on rank {launch.rank}"
                    for key in published if key not in own]
    if differences:
        store.set(f"refused/{launch.rank}", "; ".join(differences))


def _refuse_if_any_differs(store: RankStore, launch: Launch) -> None:
    """After the start line, every rank stops if any rank's settings differ from rank 0's: nothing is measured."""
    for rank in range(launch.world_size):
        if store.has(f"refused/{rank}"):
            raise ValueError(f"rank {rank} was launched with other settings than rank 0 "
                             f"({store.get(f'refused/{rank}')}); nothing was measured: launch every rank with "
                             "the same options")


def _prepare(config: RunConfig, store: RankStore) -> tuple[RunLock, list]:
    """Rank 0, before anyone measures: lock the stem, merge the shards to resume, or keep an earlier run's files aside."""
    lock = None
    try:
        lock = RunLock(config.stem).acquire()  # a single-process run on the same files is refused meanwhile
        if config.resume:
            merge_shards(config.stem, locked=True)
            return lock, []
        return lock, move_aside(stem_file(config.stem, ".jsonl"), stem_file(config.stem, ".csv")) + \
            move_shards_aside(config.stem)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    finally:
        store.set("prepared")  # even on failure: the others then fail on their own instead of waiting


def _measure_units(config: RunConfig, launch: Launch, store: RankStore):
    env = {**config.environment(), "rank": launch.rank}
    shard = shard_stem(config.stem, launch.rank)
    counts = {"rows": 0, "errors": 0, "skipped": 0}
    with ResultsWriter(shard, env, resume=True) as writer:
        _check_merged_settings(config, env)
        done, own = measured_cells(config.stem) | measured_cells(shard), measured_cells(shard)
        work, baselines, claimed = units(config), set(), 0
        while (index := store.claim()) < len(work):
            exit_if_told(launch, claimed)
            claimed += 1
            store.heartbeat()
            unit = work[index]
            groups = [] if unit.pooler is None else plan_network(config, unit.model, [unit.pooler], baseline=False)
            if unit.pooler is not None and all(g.cell_key(metric) in done for g, metric in grid_cells(groups)):
                continue  # measured before (a resume): nothing to do, not even the baseline
            errors_before = counts["errors"]
            if unit.model not in baselines:  # this device's own baseline for the network
                _add(counts, measure_groups(plan_network(config, unit.model, []), own, config, writer, False))
                baselines.add(unit.model)
            _add(counts, measure_groups(groups, done, config, writer, False))
            print(f"rank {launch.rank}: {unit.model} {unit.pooler or 'baseline'} done "
                  f"(unit {index + 1} of {len(work)})", file=sys.stderr, flush=True)
            if counts["errors"] > errors_before and not device_healthy(config.device):
                print(f"rank {launch.rank}: {config.device} no longer runs a kernel; this rank stops taking work "
                      "(its errors are recorded, the other ranks go on)", file=sys.stderr, flush=True)
                break
            store.heartbeat()
    return shard, counts


def _add(counts: dict, measured: dict) -> None:
    counts["rows"] += measured["rows"]
    counts["errors"] += measured["error"]
    counts["skipped"] += measured["skipped"]


def _check_merged_settings(config: RunConfig, env: dict) -> None:
    """Refuse to resume into a merged file measured with other settings (each shard is checked by its writer)."""
    merged = stem_file(config.stem, ".jsonl")
    if not config.resume or not merged.exists() or merged.stat().st_size == 0:
        return
    records = read_records(merged).records
    if not records:
        return
    # ranks on other hosts or GPU models (and their thread counts) legitimately differ; what they measure may not
    differences = settings_differences(records[0], env, ignore=RANK_VOLATILE)
    if differences:
        raise ValueError(f"cannot resume {merged}: it was measured with other settings ({'; '.join(differences)}); "
                         "rerun with the file's settings, or drop --resume to start a new run")


def missing_cells(config: RunConfig, results) -> list[CellKey]:
    """Cells of the grid with no complete row in ``results`` (a rank died holding them), in grid order."""
    present: set[CellKey] = set()
    if results is not None and results.exists() and results.stat().st_size > 0:
        present = {CellKey.of(record) for record in load_results(results).to_dict("records")}
    planned = [group.cell_key(metric) for group, metric in grid_cells(plan(config))]
    return [cell for cell in dict.fromkeys(planned) if cell not in present]


def _merge(config: RunConfig, counts: dict, moved: list) -> RunResult:
    merged = merge_shards(config.stem, locked=True) or stem_file(config.stem, ".jsonl")
    return RunResult(merged, stem_file(config.stem, ".csv"), None, **counts, moved_aside=moved,
                     missing=missing_cells(config, merged))
