"""Named metrics: each a function of a :class:`Subject`, added with ``@metric``, producing :class:`MetricRow`\\ s.

A *subject* (:mod:`poolbench.measure.metric_subject`) is what gets measured: a whole network (VGG-16, ResNet-50/101 with
a pooler swapped in) or one pooling layer at the input shape it has inside
that network.  A metric returns :class:`Quantity` values; :func:`measure`
turns them into rows of one type and turns a failure (out of memory, a kernel
error, a tier this device lacks) into a row that stores the error, so a run
always goes on.  New metrics need only the decorator::

    @metric("my_metric", scopes=("layer",))
    def my_metric(subject):
        return [Quantity("thing", 1.0, "unit")]

Conventions: latency in milliseconds (median; q20/q80 in ``detail``); memory
in bytes; FLOPs as multiply-accumulates per image (fvcore's convention);
parameters as counts.  Ratios against the max-pool baseline are computed in
the report, from rows measured in the same run.  The metrics poolbench ships
live in :mod:`poolbench.measure.builtin_metrics`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, NamedTuple

import torch

from . import registry

__all__ = [
    "CellKey",
    "Column",
    "BASELINE_POOLER",
    "BASELINE_TIER",
    "METRICS",
    "MetricSpec",
    "Quantity",
    "MetricRow",
    "Settings",
    "measure",
    "metric",
    "metric_names",
]

#: The baseline row of every comparison: torchvision's own network (max pooling, strided convolutions)
#: and, per layer, ``nn.MaxPool2d`` with the layer's window.
BASELINE_POOLER = "max"
BASELINE_TIER = "torchvision"

SCOPES = ("network", "layer")

#: How the CPU memory column is measured (CUDA has allocator statistics; CPU does not).
CPU_MEMORY_METHOD = (
    "bytes of the activations autograd saves for backward during a train-mode forward "
    "(torch.autograd.graph.saved_tensors_hooks, storages counted once, parameters left out) — exact and "
    "device-independent; peak allocator memory needs CUDA (torch.cuda.max_memory_allocated), so it is n/a on CPU"
)


@dataclass
class MetricRow:
    """One measured quantity of one (model, pooler, tier, scope, layer, metric) cell.

    ``status`` is ``"ok"``, ``"skipped"`` (the cell cannot run here; ``error``
    says why) or ``"error"`` (it failed; ``error`` holds the message).
    ``detail`` is a JSON object with everything else (quantiles, per-layer
    counts, the method used).
    """

    model: str
    pooler: str
    tier: str
    scope: str
    layer: str
    shape: str
    metric: str
    quantity: str
    value: float | None
    unit: str
    status: str = "ok"
    error: str = ""
    detail: str = ""
    seconds: float = 0.0

    def cell(self) -> "CellKey":
        return cell_key(self.model, self.pooler, self.tier, self.scope, self.layer, self.metric)

    def as_dict(self) -> dict:
        return asdict(self)


class CellKey(NamedTuple):
    """The identity of one measured cell (what ``--resume`` skips, what the merge keeps one attempt of).

    A named tuple: it is the one place the six fields are spelled out, and it still compares equal to
    (and hashes as) the plain tuple of its fields.
    """

    model: str
    pooler: str
    tier: str
    scope: str
    layer: str
    metric: str

    @classmethod
    def of(cls, record) -> "CellKey":
        """The key of a result row (a dict, or anything with the six fields as items), every field as text."""
        return cls(*(str(record[field]) if record[field] is not None else "" for field in cls._fields))


def cell_key(model: str, pooler: str, tier: str, scope: str, layer: str, metric: str) -> CellKey:
    """The identity of one measured cell (what ``--resume`` skips)."""
    return CellKey(model, pooler, tier, scope, layer, metric)


@dataclass(frozen=True)
class Quantity:
    """One value a metric produces: ``name``, ``value`` in ``unit``, and free-form ``detail``."""

    name: str
    value: float | int | None
    unit: str
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """How hard to measure latency: warm-up calls, minimum timed seconds per measurement, and rounds.

    The rounds follow the measurement core's one timing policy
    (:func:`poolbench.measure.timing.time_rounds`): with ``rounds > 1`` the
    latency is measured that many times and the round with the lowest median
    is kept (all medians go to ``detail``): on a shared CPU another process's
    burst inflates a round, never deflates it, so the best median is the
    robust estimate of the undisturbed one.
    """

    warmup: int = 3
    min_run_time: float = 0.2
    rounds: int = 1
    #: "eager" (each call launched from Python) or "graph" (CUDA only: also CUDA-graph replays, which
    #: time the device work alone; the report then shows both and flags host-bound cells)
    timing: str = "eager"

    def __post_init__(self):
        if self.timing not in ("eager", "graph"):
            raise ValueError(f"timing must be 'eager' or 'graph', got {self.timing!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or not 1 <= self.rounds <= 1000:
            raise ValueError(f"rounds must be an int in [1, 1000], got {self.rounds!r}")
        if not 0 < self.min_run_time <= MAX_MIN_RUN_TIME:  # also rejects NaN and inf, which would time forever
            raise ValueError(f"min_run_time must be in (0, {MAX_MIN_RUN_TIME:g}] seconds, got {self.min_run_time!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or not 0 <= self.warmup <= 1000:
            raise ValueError(f"warmup must be an int in [0, 1000], got {self.warmup!r}")


#: Longest timed window per latency measurement (a bound, so no setting can make a run hang).
MAX_MIN_RUN_TIME = 60.0


@dataclass(frozen=True)
class Column:
    """How the report shows one quantity of a metric: a column per network or per layer table.

    ``quantities`` are tried in order (the first one measured is shown);
    ``kind`` is ``"value"`` (÷ ``scale``, ``digits`` decimals), ``"int"``
    (thousands separators) or ``"ratio"`` (÷ the same quantity of the
    baseline network or layer measured in the same run).
    """

    header: str
    quantities: tuple[str, ...]
    kind: str = "value"
    scale: float = 1.0
    digits: int = 2
    scopes: tuple[str, ...] = SCOPES

    def __post_init__(self):
        if self.kind not in ("value", "int", "ratio"):
            raise ValueError(f"column kind must be 'value', 'int' or 'ratio', got {self.kind!r}")
        if isinstance(self.quantities, str):
            object.__setattr__(self, "quantities", (self.quantities,))


@dataclass(frozen=True)
class MetricSpec:
    name: str
    #: ``function(subject)``, ``subject`` a :class:`poolbench.measure.metric_subject.Subject`.
    function: Callable[[object], list[Quantity]]
    scopes: tuple[str, ...]
    devices: tuple[str, ...]
    description: str
    columns: tuple[Column, ...] = ()

    def unavailable_reason(self, device: torch.device | str) -> str | None:
        device_type = torch.device(device).type
        if device_type not in self.devices:
            return f"metric {self.name} needs {' or '.join(self.devices)} (this run is on {device_type})"
        return None


#: Metric name -> spec, in registration order: poolbench's built-in metrics load first, as a plugin
#: (:func:`poolbench.registry.load_plugins`), then plugins' own.  Read it through :func:`registered`.
METRICS: dict[str, MetricSpec] = {}


def registered() -> dict[str, MetricSpec]:
    """Every metric, built-in and plugins' (loading the plugins first if needed), in registration order."""
    registry.load_plugins()
    return METRICS


def metric(name: str, *, scopes: Iterable[str] = SCOPES, devices: Iterable[str] = ("cpu", "cuda"),
           description: str = "", columns: Iterable[Column] = ()):
    """Register ``function(subject) -> list[Quantity]`` as metric ``name`` for the given scopes and devices.

    ``columns`` say how the report shows its quantities (it loops over every
    registered metric's columns, in registration order).
    """
    scopes = tuple(scopes)
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scope(s) {sorted(unknown)}; expected a subset of {SCOPES}")

    def decorator(function):
        METRICS[name] = MetricSpec(name, function, scopes, tuple(devices),
                                   description or (function.__doc__ or "").strip().splitlines()[0], tuple(columns))
        return function

    return decorator


def report_columns(scope: str) -> list[Column]:
    """Every registered metric's report columns for ``scope`` ("network" or "layer"), in registration order."""
    return [column for spec in registered().values() for column in spec.columns if scope in column.scopes]


def metric_names(scope: str | None = None) -> list[str]:
    """Registered metric names (for ``scope`` only, if given), in registration order."""
    return [name for name, spec in registered().items() if scope is None or scope in spec.scopes]


# ----------------------------------------------------------------------------------------------
# running one metric
# ----------------------------------------------------------------------------------------------

def measure(subject, name: str) -> list[MetricRow]:
    """Rows of metric ``name`` on ``subject`` (a :class:`poolbench.measure.metric_subject.Subject`); a failure
    becomes one ``error`` row, never an exception."""
    spec = registered().get(name)
    if spec is None:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    if subject.scope not in spec.scopes:
        raise ValueError(f"metric {name!r} does not apply to scope {subject.scope!r} (only {spec.scopes})")
    reason = spec.unavailable_reason(subject.device)
    if reason is not None:
        return [subject.row(name, name, None, "", "skipped", reason)]
    start = time.perf_counter()
    try:
        quantities = spec.function(subject)
    except (Exception, SystemExit) as exc:  # a failing cell (even a plugin calling sys.exit) records its error
        if subject.device.type == "cuda":
            torch.cuda.empty_cache()
        rows = [subject.row(name, name, None, "", "error", f"{type(exc).__name__}: {exc}".strip()[:2000])]
    else:
        rows = [subject.row(name, q.name, q.value, q.unit, detail=q.detail) for q in quantities]
    seconds = time.perf_counter() - start
    for row in rows:
        row.seconds = round(seconds, 4)
    return rows


def skipped_rows(subject, names: Iterable[str], reason: str, status: str = "skipped") -> list[MetricRow]:
    """One row per metric saying why the whole cell group did not run."""
    return [subject.row(name, name, None, "", status, reason) for name in names]
