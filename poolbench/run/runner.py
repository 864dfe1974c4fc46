"""The measurement grid: model × pooler × tier × (network, each pooling layer) × metric.

Whatever the registry holds is measured: every pooler, every tier (or the
fastest per device), plus the baseline — torchvision's unmodified network and
``nn.MaxPool2d`` per layer.  A tier that cannot run on the device is recorded
as ``skipped`` with the registry's reason; a cell that fails is recorded with
its error; either way the run goes on.  Each finished cell is appended to the
results files at once (see :mod:`poolbench.run.results`), so ``resume=True`` skips
what an interrupted run already measured.
"""
from __future__ import annotations

import ctypes
import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from .. import metrics as metrics_module
from .. import models, registry
from ..measure.metric_subject import Subject
from ..measure.subject import check_amp, torch_threads
from ..measure.timing import check_timing
from ..metrics import BASELINE_POOLER, BASELINE_TIER, MetricRow, Settings
from ..models import PLACEMENTS, placed_name, split_placement
from .results import ResultsWriter, check_run_name, environment, measured_cells
from .shards import merge_shards, move_shards_aside

__all__ = ["QUICK", "QUICK_POOLERS", "Group", "RunConfig", "RunResult", "grid_cells", "measure_groups", "plan",
           "plan_network", "run_local"]

#: The ``--quick`` subset: the baselines, Lite/Full-DPP and two learned-weight poolers.
QUICK_POOLERS = ("max", "avg", "dpp_lite_sym", "dpp_full_sym", "softpool", "lip")

#: ``--quick`` presets: small enough for 2 CPU cores in a few minutes, still every network and layer.
#: One CPU thread: on a shared machine two processes' OpenMP thread pools stall each other at every barrier and
#: 2-thread timings swing 10× between rounds; one thread per process is merely time-sliced.
QUICK = {"batch": 1, "resolution": 64, "poolers": QUICK_POOLERS, "tiers": ("fastest",),
         "settings": Settings(warmup=1, min_run_time=0.05, rounds=3), "threads": 1}

FASTEST = "fastest"


@dataclass
class RunConfig:
    """What to measure and where; ``None`` means "everything registered"."""

    device: str = "cpu"
    models: tuple[str, ...] | None = None  # None: every registered network
    poolers: tuple[str, ...] | None = None
    tiers: tuple[str, ...] | None = None
    metrics: tuple[str, ...] | None = None
    batch: int = 8
    resolution: int = 224
    layers: bool = True
    out: Path = Path("reports")
    name: str | None = None
    resume: bool = False
    quick: bool = False
    settings: Settings = field(default_factory=Settings)
    dtype: torch.dtype = torch.float32
    threads: int | None = None  # CPU threads for the run (None: torch's default)
    placement: str = "paper"  # "paper", "authors" or "both": where the network declares it (poolbench.models)
    rank_timeout_s: float = 1800.0  # under torchrun: how long a silent rank is waited for before it counts as dead
    amp: str = "off"  # torch.autocast dtype around forwards and training steps: "off", "bf16" or "fp16"
    channels_last: bool = False  # networks, layers and inputs in channels-last memory format

    def __post_init__(self):
        self.device = str(self.device)
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was given but CUDA is not available on this machine "
                             "(torch.cuda.is_available() is False); use --device cpu")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        known = models.names()
        self.models = tuple(known) if self.models is None else tuple(self.models)
        for name in self.models:
            if split_placement(name)[0] not in known:
                raise ValueError(f"unknown model {name!r}; expected some of {', '.join(known)}")
        if self.placement not in PLACEMENTS + ("both",):
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, both; got {self.placement!r}")
        # a network name carries its placement ("resnet50@authors"): rows of both placements live side by side.
        # A network none of the poolers has an authors' network of keeps its paper placement, under its bare
        # name (VGG-16 is measured once); plan() keeps, at the authors' placement, only the poolers whose
        # authors built that network.
        wanted = PLACEMENTS if self.placement == "both" else (self.placement,)
        self.models = tuple(dict.fromkeys(
            name if "@" in name else placed_name(
                name, placement if placement in models.placements_of(name, self.poolers) else "paper")
            for name in self.models for placement in wanted))
        if self.metrics is not None:
            registry.load_plugins()  # a plugin may register metrics too
            for name in self.metrics:
                if name not in metrics_module.registered():
                    raise ValueError(f"unknown metric {name!r}; known: {', '.join(metrics_module.registered())}")
        if self.tiers is not None:
            for tier in self.tiers:
                registry.check_tier_names([tier], extra=(FASTEST,))
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads <= 0):
            raise ValueError(f"threads must be a positive int, got {self.threads!r}")
        for label, value in (("batch", self.batch), ("resolution", self.resolution)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{label} must be a positive int, got {value!r}")
        if self.poolers is not None:
            unknown = [name for name in self.poolers if name not in registry.names()]
            if unknown:
                broken = "".join(f"; plugin {label} failed to import ({error})"
                                 for label, error in registry.load_plugins().items())
                raise ValueError(f"unknown pooler(s) {', '.join(map(repr, unknown))}; known: "
                                 f"{', '.join(registry.names())}{broken}")
        if self.name is not None:
            check_run_name(self.name)
        if isinstance(self.rank_timeout_s, bool) or not isinstance(self.rank_timeout_s, (int, float)) \
                or not 0 < self.rank_timeout_s < float("inf"):
            raise ValueError(f"rank_timeout_s must be a positive number of seconds, got {self.rank_timeout_s!r}")
        check_amp(self.amp)
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last must be True or False, got {self.channels_last!r}")
        check_timing(self.settings.timing, device)
        self.out = Path(self.out)

    def environment(self) -> dict:
        """The settings every row of this run carries (compared on ``--resume``)."""
        return environment(self.device, self.dtype, self.batch, self.resolution, timing=self.settings,
                           amp=self.amp, channels_last=self.channels_last)

    @property
    def run_name(self) -> str:
        device_type = torch.device(self.device).type
        return self.name or (f"quick_{device_type}" if self.quick else f"run_{device_type}")

    @property
    def stem(self) -> Path:
        return self.out / self.run_name

    @classmethod
    def quick_preset(cls, **overrides) -> "RunConfig":
        """The ``--quick`` configuration; any non-``None`` override wins."""
        values = {**QUICK, "quick": True}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class Group:
    """Cells sharing one built module: (model, pooler, tier) on the network or on one layer."""

    model: str
    pooler: str
    tier: str
    scope: str
    layer: str = ""
    sites: list = field(default_factory=list)
    shape: tuple[int, ...] | None = None
    metrics: list[str] = field(default_factory=list)
    skip_reason: str | None = None  # the whole (model, pooler, tier) cannot run here
    skip_status: str = "skipped"  # "error" when the tier is available but failed when tried

    def cell_key(self, metric: str) -> tuple[str, ...]:
        """The key of this group's ``metric`` cell in a results file (what ``--resume`` looks up)."""
        return metrics_module.cell_key(self.model, self.pooler, self.tier, self.scope, self.layer, metric)

    def subject(self, config: RunConfig, baselines: dict | None = None) -> Subject:
        return Subject(self.model, self.pooler, self.tier, self.scope, device=config.device, batch=config.batch,
                       resolution=config.resolution, sites=self.sites, shape=self.shape, layer=self.layer,
                       settings=config.settings, dtype=config.dtype, baselines=baselines, amp=config.amp,
                       channels_last=config.channels_last)


@dataclass
class RunResult:
    results: Path
    csv: Path
    report: Path | None
    rows: int
    errors: int
    skipped: int
    moved_aside: list[Path] = field(default_factory=list)  # an earlier run's files, kept under new names
    missing: list[tuple[str, ...]] = field(default_factory=list)  # cells no rank measured (torchrun runs)


# ----------------------------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------------------------

def _selected_tiers(pooler: str, config: RunConfig) -> list[tuple[str, str | None]]:
    """(tier, reason-it-cannot-run or None) for ``pooler`` under the config's tier selection."""
    device = torch.device(config.device)
    registered = registry.tiers(pooler)
    wanted = list(config.tiers) if config.tiers is not None else None
    chosen: list[tuple[str, str | None]] = []
    if wanted is None or FASTEST in wanted:
        if wanted is None:
            chosen += list(registry.tiers_on(pooler, device).items())
        else:
            chosen.extend(_fastest_working_tier(pooler, device))
    for tier in wanted or []:
        if tier == FASTEST or tier not in registered or any(tier == t for t, _ in chosen):
            continue
        chosen.append((tier, registry.get_spec(pooler, tier).unavailable_reason(device)))
    if not chosen:
        chosen.append(("none", f"{pooler} has none of the tiers {', '.join(wanted or [])} "
                               f"(it has: {', '.join(registered)})"))
    return chosen


class TierFailure(str):
    """Why an available tier failed when tried: recorded as an error (it should have run), not a skip."""


def _fastest_working_tier(pooler: str, device: torch.device) -> list[tuple[str, str | None]]:
    """The fastest tier that actually runs a tiny input here, after the tiers that failed (with why).

    The registry's ``available`` hooks are cheap checks (a compiler exists);
    a C++/CUDA tier may still fail to build on first use.  Trying a 4×4 input
    first means a failed build falls back to the next tier instead of turning
    every cell of the pooler into an error.
    """
    registered = registry.tiers(pooler)
    preference = [spec.tier for spec in registry.by_priority(map(registry.get_spec, [pooler] * len(registered), registered),
                                                             device)]
    candidates = preference + [t for t in registered if t not in preference and registry.left_out_reason(t) is None]
    failed: list[tuple[str, str | None]] = []
    for tier in candidates:
        spec = registry.get_spec(pooler, tier)
        reason = spec.unavailable_reason(device)
        if reason is None:
            try:
                options = {"seed": 0} if spec.stochastic else {}
                module = registry.create(pooler, 2, 2, 2, 0, tier=tier, device=device, **options)
                with torch.no_grad():
                    module(torch.rand(1, 2, 4, 4, device=device))
            except (Exception, SystemExit) as exc:  # a build or kernel failure: record it, try the next tier
                reason = TierFailure(f"tried as the fastest tier and failed: {type(exc).__name__}: {exc}"[:1000])
        if reason is None:
            return failed + [(tier, None)]
        if tier in preference:
            failed.append((tier, reason))
    return failed or [(registered[0] if registered else "none", f"no tier of {pooler} runs on {device.type}")]


def _layer_groups(model: str, config: RunConfig, pooler: str | None = None) -> list[tuple[str, list, tuple[int, ...]]]:
    """(label, sites, input shape) per distinct pooling layer; a block's main path and shortcut share one.

    With ``pooler``, the layers of the network that pooler declares itself (its authors' network).  At the
    authors' placement each label carries its window, since two poolers' networks may pool one tensor
    with different windows.
    """
    merged: dict[tuple, list] = {}
    for site, shape in models.layer_input_shapes(model, config.batch, config.resolution, pooler):
        merged.setdefault((shape, site.geometry, site.channels, site.options,
                           site.name.split(".conv1")[0].split(".downsample")[0]), []).append(site)
    groups = []
    for (shape, geometry, _, _, prefix), sites in merged.items():
        label = sites[0].name if len(sites) == 1 else f"{prefix} ({'+'.join(s.role for s in sites)})"
        if split_placement(model)[1] != "paper":
            label += " (k{} s{} p{})".format(*geometry)
        groups.append((label, sites, shape))
    return groups


def _own_layer_groups(config: RunConfig, model: str, poolers: list[str]) -> dict[str, list]:
    """The layer groups of every pooler in ``poolers`` that brings its own ``model`` network."""
    return {pooler: _layer_groups(model, config, pooler) for pooler in poolers
            if pooler in registry.names() and models.network_declaration(model, pooler) is not None}


def _metric_list(config: RunConfig, scope: str) -> list[str]:
    names = metrics_module.metric_names(scope)
    return [n for n in names if config.metrics is None or n in config.metrics]


def plan(config: RunConfig) -> list[Group]:
    """Every cell group of the run, baseline first in each network, in measuring order."""
    registry.load_plugins()
    poolers = list(config.poolers) if config.poolers is not None else registry.names()
    # at the authors' placement a (network, pooler) cell exists only where that pooler's authors built the network
    return [group for model in config.models
            for group in plan_network(config, model, [p for p in poolers if p not in registry.names()
                                                      or models.has_network(model, p)])]


def plan_network(config: RunConfig, model: str, poolers: list[str], *, baseline: bool = True) -> list[Group]:
    """The cell groups of ``poolers`` in one network (the max-pool baseline's first unless ``baseline=False``)."""
    known = set(registry.names())
    network_metrics, layer_metrics = _metric_list(config, "network"), _metric_list(config, "layer")
    own_layer_groups: dict[str, list] = {}
    try:
        if not config.layers:
            layer_groups = []
        elif split_placement(model)[1] == "paper":
            layer_groups = _layer_groups(model, config)
            own_layer_groups = _own_layer_groups(config, model, poolers)
        else:  # each pooler's own network; the baseline pools every layer any of them pools
            own_layer_groups = _own_layer_groups(config, model, poolers)
            layer_groups = list({g[0]: g for groups in own_layer_groups.values() for g in groups}.values())
        layer_error = None
    except Exception as exc:  # e.g. a resolution too small for the network
        layer_groups, layer_error = [], f"{type(exc).__name__}: {exc}"
    candidates = [(BASELINE_POOLER, BASELINE_TIER, None)] if baseline else []
    for pooler in poolers:
        if pooler not in known:
            candidates.append((pooler, "none", f"pooler {pooler!r} is not registered "
                                               f"(registered: {', '.join(sorted(known))})"))
            continue
        candidates.extend((pooler, tier, reason) for tier, reason in _selected_tiers(pooler, config))
    groups: list[Group] = []
    for pooler, tier, reason in candidates:
        if reason is not None:
            status = "error" if isinstance(reason, TierFailure) else "skipped"
            groups.append(Group(model, pooler, tier, "network", metrics=["all"], skip_reason=reason,
                                skip_status=status))
            continue
        groups.append(Group(model, pooler, tier, "network", metrics=network_metrics))
        if layer_error is not None:
            groups.append(Group(model, pooler, tier, "layer", layer="all", metrics=["all"],
                                skip_reason=layer_error))
        for label, sites, shape in own_layer_groups.get(pooler, layer_groups):
            groups.append(Group(model, pooler, tier, "layer", label, sites, shape, layer_metrics))
    return groups


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------

def grid_cells(groups: list[Group]) -> Iterator[tuple[Group, str]]:
    """(group, metric) for every cell of ``groups``, in measuring order."""
    for group in groups:
        for name in group.metrics:
            yield group, name


def run_local(config: RunConfig, *, progress: bool = True) -> RunResult:
    """Measure the grid in this process, appending every cell to ``<out>/<name>.jsonl/.csv``.

    The report is rendered by the caller (:func:`poolbench.run.sweep.run`); a torchrun rank runs
    :func:`poolbench.run.rank.run_rank` instead.
    """
    with torch_threads(config.threads):
        groups = plan(config)
        env = config.environment()
        # a torchrun launch's shards: merged before resuming, kept aside by a new run (never merged into it)
        shards_aside = [] if config.resume else move_shards_aside(config.stem)
        if config.resume:
            merge_shards(config.stem)
        # the writer locks the file and cuts a torn tail before the measured cells are read
        with ResultsWriter(config.stem, env, resume=config.resume) as writer:
            done = measured_cells(config.stem) if config.resume else set()
            counts = measure_groups(groups, done, config, writer, progress)
    return RunResult(writer.jsonl, writer.csv, None, counts["rows"], counts["error"], counts["skipped"],
                     writer.moved_aside + shards_aside)


def measure_groups(groups: list[Group], done: set, config: RunConfig, writer: ResultsWriter,
                   progress: bool) -> dict:
    """Measure every cell of ``groups`` not in ``done``, each appended through ``writer``; row counts by status."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    counts = {"rows": 0, "error": 0, "skipped": 0}

    def write(rows: list[MetricRow]) -> None:
        writer.write(rows)
        counts["rows"] += len(rows)
        for row in rows:
            if row.status in counts:
                counts[row.status] += 1

    todo = [(g, m) for g, m in grid_cells(groups) if g.cell_key(m) not in done]
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("measuring", total=len(todo))
        current: Group | None = None
        subject: Subject | None = None
        baselines: dict = {}  # one initialised CPU network per model, deep-copied for each pooler
        for group, name in todo:
            if group is not current:
                if subject is not None:
                    subject.release()
                    if subject.model_name != group.model:
                        baselines.clear()
                    _free(config.device)
                current, subject = group, group.subject(config, baselines)
            label = f"{group.model} {group.pooler}[{group.tier}] {group.layer or 'network'} {name}"
            bar.update(task, description=label)
            if group.skip_reason is not None:
                write(metrics_module.skipped_rows(subject, [name], group.skip_reason, group.skip_status))
            else:
                write(metrics_module.measure(subject, name))
            bar.advance(task)
        if subject is not None:
            subject.release()
    return counts


def _free(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    _malloc_trim()


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc keeps them; a run builds dozens of 100-500 MB networks)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
