"""Named metrics: each a function of a :class:`Subject`, added with ``@metric``, producing :class:`MetricRow`\\ s.

A *subject* is what gets measured: a whole network (VGG-16, ResNet-50/101 with
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
the report, from rows measured in the same run.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from . import flops, models, registry
from .timing import measure_latency, peak_memory_bytes, saved_tensor_bytes

__all__ = [
    "Column",
    "BASELINE_POOLER",
    "BASELINE_TIER",
    "METRICS",
    "MetricSpec",
    "Quantity",
    "MetricRow",
    "Settings",
    "Subject",
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

    def cell(self) -> tuple[str, ...]:
        return cell_key(self.model, self.pooler, self.tier, self.scope, self.layer, self.metric)

    def as_dict(self) -> dict:
        return asdict(self)


def cell_key(model: str, pooler: str, tier: str, scope: str, layer: str, metric: str) -> tuple[str, ...]:
    """The identity of one measured cell (what ``--resume`` skips)."""
    return (model, pooler, tier, scope, layer, metric)


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

    With ``rounds > 1`` the latency is measured that many times and the round
    with the lowest median is kept (all medians go to ``detail``): on a shared
    CPU another process's burst inflates a round, never deflates it, so the
    best median is the robust estimate of the undisturbed one.
    """

    warmup: int = 3
    min_run_time: float = 0.2
    rounds: int = 1

    def __post_init__(self):
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds must be an int >= 1, got {self.rounds!r}")
        if not self.min_run_time > 0:
            raise ValueError(f"min_run_time must be > 0 seconds, got {self.min_run_time!r}")


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
    function: Callable[["Subject"], list[Quantity]]
    scopes: tuple[str, ...]
    devices: tuple[str, ...]
    description: str
    columns: tuple[Column, ...] = ()

    def unavailable_reason(self, device: torch.device | str) -> str | None:
        device_type = torch.device(device).type
        if device_type not in self.devices:
            return f"metric {self.name} needs {' or '.join(self.devices)} (this run is on {device_type})"
        return None


METRICS: dict[str, MetricSpec] = {}


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
    return [column for spec in METRICS.values() for column in spec.columns if scope in column.scopes]


def metric_names(scope: str | None = None) -> list[str]:
    """Registered metric names (for ``scope`` only, if given), in registration order."""
    return [name for name, spec in METRICS.items() if scope is None or scope in spec.scopes]


# ----------------------------------------------------------------------------------------------
# what is measured
# ----------------------------------------------------------------------------------------------

class Subject:
    """A network or one pooling layer, with its input, ready to be measured on ``device``.

    Built lazily and once: every metric of a cell group shares the module.
    Layer inputs are ReLU'd Gaussians — every pooling site in these networks
    follows a ReLU — at the shape the layer sees in the network.
    """

    def __init__(self, model_name: str, pooler: str, tier: str, scope: str, *, device: torch.device | str,
                 batch: int, resolution: int, sites: list[models.PoolSite] | None = None,
                 shape: tuple[int, ...] | None = None, layer: str = "", settings: Settings = Settings(),
                 dtype: torch.dtype = torch.float32, seed: int = 0, baselines: dict | None = None):
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.model_name, self.pooler, self.tier, self.scope = model_name, pooler, tier, scope
        self.device, self.dtype = torch.device(device), dtype
        self.batch, self.resolution = batch, resolution
        self.sites = list(sites or [])
        self.layer = layer
        self.shape = tuple(shape) if shape is not None else (batch, 3, resolution, resolution)
        self.settings, self.seed = settings, seed
        self.baselines = baselines if baselines is not None else {}
        self._module: nn.Module | None = None
        self._inputs: torch.Tensor | None = None
        self._grad: torch.Tensor | None = None

    # -- identity ---------------------------------------------------------------------------
    @property
    def is_baseline(self) -> bool:
        return self.pooler == BASELINE_POOLER and self.tier == BASELINE_TIER

    @property
    def site(self) -> models.PoolSite:
        if not self.sites:
            raise ValueError("a network subject has no pooling site")
        return self.sites[0]

    def row(self, metric: str, quantity: str, value, unit: str, status: str = "ok", error: str = "",
            detail: dict | None = None) -> MetricRow:
        return MetricRow(self.model_name, self.pooler, self.tier, self.scope, self.layer,
                   "x".join(map(str, self.shape)), metric, quantity,
                   None if value is None else float(value), unit, status, error,
                   json.dumps(detail, sort_keys=True, default=str) if detail else "")

    # -- building ---------------------------------------------------------------------------
    def pooler_options(self) -> dict:
        spec = registry.get_spec(self.pooler, self.tier)
        return {"seed": self.seed} if spec.stochastic else {}

    def build(self, tier: str | None = None) -> nn.Module:
        """A fresh module for this subject (``tier`` overrides the pooler's tier, e.g. for FLOP counting).

        Networks are deep copies of one initialised baseline per model (shared
        through ``baselines``), so every pooler sees the same weights and
        VGG-16's seconds-long initialisation happens once per run.
        """
        tier = tier or self.tier
        if self.scope == "network":
            base = self.baselines.get(self.model_name)
            if base is None:
                torch.manual_seed(self.seed)
                base = self.baselines[self.model_name] = models.build_baseline(self.model_name)
            module = copy.deepcopy(base)
            if not self.is_baseline:
                torch.manual_seed(self.seed)
                models.swap_in(module, self.model_name, self.pooler, tier, device=self.device, **self.pooler_options())
        elif self.is_baseline:
            module = nn.MaxPool2d(*self.site.geometry)
        else:
            module = registry.create(self.pooler, self.site.channels, *self.site.geometry, tier=tier,
                                     **self.pooler_options())
        return module.to(device=self.device, dtype=self.dtype)

    @property
    def module(self) -> nn.Module:
        if self._module is None:
            torch.manual_seed(self.seed)
            self._module = self.build()
        return self._module

    def inputs(self, batch: int | None = None) -> torch.Tensor:
        """The subject's input (batch ``batch`` if given: a slice of the same tensor)."""
        if self._inputs is None:
            generator = torch.Generator().manual_seed(self.seed)
            x = torch.randn(self.shape, generator=generator, dtype=self.dtype)
            self._inputs = (x if self.scope == "network" else x.relu_()).to(self.device)
        return self._inputs if batch is None else self._inputs[:batch]

    # -- closures (zero-argument, set-up outside) -------------------------------------------
    def forward_fn(self) -> Callable[[], object]:
        """Inference: eval mode, no autograd."""
        module, x = self.module.eval(), self.inputs()

        def forward():
            with torch.no_grad():
                return module(x)

        return forward

    def train_fn(self) -> Callable[[], object]:
        """One training step without the optimizer: train-mode forward and backward (input grads for layers)."""
        module = self.module.train()
        x = self.inputs().detach().requires_grad_(self.scope == "layer")
        if self._grad is None:
            with torch.no_grad():
                self._grad = torch.randn_like(module(x))

        def step():
            module.zero_grad(set_to_none=True)
            x.grad = None
            module(x).backward(self._grad)

        return step

    def training_forward_fn(self) -> Callable[[], object]:
        """A train-mode forward with autograd recording (what a training step keeps for backward)."""
        module = self.module.train()
        x = self.inputs().detach().requires_grad_(self.scope == "layer")
        return lambda: module(x)

    def release(self) -> None:
        self._module = self._inputs = self._grad = None


# ----------------------------------------------------------------------------------------------
# running one metric
# ----------------------------------------------------------------------------------------------

def measure(subject: Subject, name: str) -> list[MetricRow]:
    """Rows of metric ``name`` on ``subject``; a failure becomes one ``error`` row, never an exception."""
    spec = METRICS.get(name)
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
    except Exception as exc:  # a failing cell records its error; the run goes on
        if subject.device.type == "cuda":
            torch.cuda.empty_cache()
        rows = [subject.row(name, name, None, "", "error", f"{type(exc).__name__}: {exc}".strip()[:2000])]
    else:
        rows = [subject.row(name, q.name, q.value, q.unit, detail=q.detail) for q in quantities]
    seconds = time.perf_counter() - start
    for row in rows:
        row.seconds = round(seconds, 4)
    return rows


def skipped_rows(subject: Subject, names: Iterable[str], reason: str, status: str = "skipped") -> list[MetricRow]:
    """One row per metric saying why the whole cell group did not run."""
    return [subject.row(name, name, None, "", status, reason) for name in names]


# ----------------------------------------------------------------------------------------------
# the metrics
# ----------------------------------------------------------------------------------------------

def _latency(name: str, fn: Callable[[], object], subject: Subject) -> Quantity:
    settings = subject.settings
    rounds = [measure_latency(fn, subject.device, warmup=settings.warmup if i == 0 else 0,
                              min_run_time=settings.min_run_time) for i in range(settings.rounds)]
    best = min(rounds, key=lambda latency: latency.median_ms)
    detail = {"q20_ms": best.q20_ms, "q80_ms": best.q80_ms, "runs": best.runs, "method": best.method}
    if len(rounds) > 1:
        detail["method"] += f", best of {len(rounds)} rounds' medians"
        detail["round_medians_ms"] = [latency.median_ms for latency in rounds]
    return Quantity(name, best.median_ms, "ms", detail)


@metric("latency_forward", description="inference latency (eval mode, no autograd)",
        columns=(Column("forward ×", ("latency_forward",), "ratio"),))
def latency_forward(subject: Subject) -> list[Quantity]:
    """Inference latency: eval mode, no autograd; median over the runs."""
    return [_latency("latency_forward", subject.forward_fn(), subject)]


@metric("latency_train", description="forward+backward latency (train mode)",
        columns=(Column("train ×", ("latency_train",), "ratio"),))
def latency_train(subject: Subject) -> list[Quantity]:
    """Training-step latency: train-mode forward and backward (no optimizer step)."""
    return [_latency("latency_train", subject.train_fn(), subject)]


def activation_bytes(fn: Callable[[], object], module: nn.Module) -> int:
    """Bytes of non-parameter tensors autograd saves for backward while ``fn()`` runs (storages counted once).

    The weights a layer saves to compute its input gradient are left out: they
    exist anyway, and in VGG-16 they would hide the activations (the classifier
    alone saves 400 MB of weights).
    """
    return saved_tensor_bytes(fn, exclude=module.parameters())


@metric("activation_memory", description="bytes of activations autograd saves for backward",
        columns=(Column("activation MiB", ("activation_memory",), scale=2**20, digits=1, scopes=("network",)),
                 Column("activation ×", ("activation_memory",), "ratio")))
def activation_memory(subject: Subject) -> list[Quantity]:
    """Bytes of activations (not weights) autograd saves for backward in a train-mode forward."""
    forward = subject.training_forward_fn()
    return [Quantity("activation_memory", activation_bytes(forward, subject.module), "B",
                     {"method": CPU_MEMORY_METHOD})]


@metric("memory_forward", devices=("cuda",), description="peak CUDA memory of inference")
def memory_forward(subject: Subject) -> list[Quantity]:
    """Extra peak CUDA memory of an inference forward (reset_peak_memory_stats + max_memory_allocated)."""
    value = peak_memory_bytes(subject.forward_fn(), subject.device)
    return [Quantity("memory_forward", value, "B", {"method": "torch.cuda.max_memory_allocated"})]


@metric("memory_train", devices=("cuda",), description="peak CUDA memory of a training step",
        columns=(Column("peak train MiB", ("memory_train",), scale=2**20, digits=1, scopes=("network",)),
                 Column("peak train ×", ("memory_train",), "ratio")))
def memory_train(subject: Subject) -> list[Quantity]:
    """Extra peak CUDA memory of a training step (forward + backward, gradients included)."""
    step = subject.train_fn()
    step()  # first step allocates the .grad buffers' allocator blocks like every later one
    value = peak_memory_bytes(step, subject.device)
    return [Quantity("memory_train", value, "B", {"method": "torch.cuda.max_memory_allocated"})]


@metric("params", description="learned parameters and overhead vs the max-pool network",
        columns=(Column("params", ("params",), "int"),
                 Column("overhead", ("params_overhead",), "int", scopes=("network",)),
                 Column("overhead %", ("params_overhead_pct",), digits=3, scopes=("network",))))
def params(subject: Subject) -> list[Quantity]:
    """Parameters: network total and overhead vs the max-pool network (absolute, %), checked analytically."""
    if subject.scope == "layer":
        measured = models.count_params(subject.module)
        analytic = 0 if subject.is_baseline else registry.get_spec(subject.pooler, subject.tier).param_count(
            subject.site.channels, subject.site.kernel_size)
        return [Quantity("params", measured, "count", {"analytic": analytic, "sites": len(subject.sites)})]
    total = models.count_params(subject.module)
    baseline = baseline_params(subject.model_name)
    analytic = 0 if subject.is_baseline else models.param_overhead_analytic(subject.model_name, subject.pooler,
                                                                           subject.tier)
    overhead = total - baseline
    return [
        Quantity("params", total, "count"),
        Quantity("params_overhead", overhead, "count", {"analytic": analytic, "baseline": baseline}),
        Quantity("params_overhead_pct", 100.0 * overhead / baseline, "%"),
    ]


_BASELINE_PARAMS: dict[str, int] = {}


def baseline_params(model_name: str) -> int:
    """Parameters of the unmodified torchvision network (counted on the meta device, cached)."""
    if model_name not in _BASELINE_PARAMS:
        with torch.device("meta"):
            _BASELINE_PARAMS[model_name] = models.count_params(models.build_baseline(model_name))
    return _BASELINE_PARAMS[model_name]


@metric("macs", description="multiply-accumulates per image: fvcore, FlopCounterMode, analytic",
        columns=(Column("GMACs fvcore", ("macs_fvcore",), scale=1e9, digits=3, scopes=("network",)),
                 Column("GMACs FlopCounterMode", ("macs_flop_counter",), scale=1e9, digits=3, scopes=("network",)),
                 Column("pooling MMACs", ("pooling_macs_fvcore", "pooling_macs_flop_counter"), scale=1e6,
                        scopes=("network",)),
                 Column("MMACs analytic", ("macs_analytic",), scale=1e6, digits=3, scopes=("layer",)),
                 Column("MMACs fvcore", ("macs_fvcore",), scale=1e6, digits=3, scopes=("layer",)),
                 Column("MMACs FlopCounterMode", ("macs_flop_counter",), scale=1e6, digits=3, scopes=("layer",))))
def macs(subject: Subject) -> list[Quantity]:
    """MACs per image (batch 1) by fvcore and FlopCounterMode with poolbench's pooling handles, and analytically."""
    counted_tier = subject.tier if subject.is_baseline else flops.counting_tier(subject.pooler, subject.tier)
    module = subject.module if counted_tier == subject.tier else subject.build(counted_tier)
    note = {} if counted_tier == subject.tier else {"counted_on_tier": counted_tier}
    x = subject.inputs(1)
    if subject.scope == "layer":
        counts = flops.count_layer(module, x)
        fv, fc, analytic = counts["fvcore"], counts["flop_counter"], counts["analytic"]
        return [
            Quantity("macs_analytic", analytic, "MAC", note),
            Quantity("macs_flop_counter", fc, "MAC", note),
            Quantity("macs_fvcore", fv, "MAC", {**note, "fvcore_installed": flops.HAS_FVCORE}),
        ]
    counts = flops.count_network(module, x)
    fc, fv = counts["flop_counter"], counts["fvcore"]
    shapes = dict((site.name, shape) for site, shape in models.layer_input_shapes(subject.model_name, 1,
                                                                                  subject.resolution))
    scopes = flops.pooling_scopes(module)
    analytic_pooling = sum(flops.layer_analytic_macs(scopes[name], shapes[name]) or 0 for name in scopes if name in shapes)
    rows = [
        Quantity("macs_flop_counter", fc.total, "MAC", {**note, "by_category": fc.by_category,
                                                        "opaque_layers": fc.opaque_layers}),
        Quantity("pooling_macs_flop_counter", sum(fc.layers.values()), "MAC", {"layers": fc.layers}),
        Quantity("pooling_macs_analytic", analytic_pooling, "MAC"),
    ]
    if fv is not None:
        rows[1:1] = [Quantity("macs_fvcore", fv.total, "MAC", {**note, "by_category": fv.by_category,
                                                               "uncounted": fv.uncounted})]
        rows.append(Quantity("pooling_macs_fvcore", sum(fv.layers.values()), "MAC", {"layers": fv.layers}))
    else:
        rows.append(Quantity("macs_fvcore", None, "MAC", {"fvcore_installed": False}))
    return rows

