"""Per-layer DPP benchmark: every DPP tier against ``avg_pool2d`` and ``max_pool2d``.

At the pooling shapes of VGG-16 (five 2×2/2 layers) or ResNet-50 (the 3×3/2
pad 1 stem and three 2×2/2 block inputs; :func:`poolbench.measure.shapes.pool_layers`)
and for every registered DPP tier that can run on the device (so tiers added later join automatically), one run measures:

* forward and forward+backward latency, reported only as ratios to
  ``avg_pool2d`` and ``max_pool2d`` timed in the same run, layer by layer;
* achieved bandwidth: the bytes a fused kernel must move divided by the time
  (forward: read x, write y; forward+backward: additionally read x and ∂y and
  write ∂x), and on CUDA its fraction of the card's peak (:data:`PEAK_BANDWIDTH`);
* training memory as a ratio to ``avg_pool2d``: bytes autograd saves for
  backward (every device) and the extra peak allocated memory over a
  forward+backward (CUDA only).

A cell that fails (a compile error, out of memory, an unsupported dtype) keeps
its error message and the run goes on.  ``poolbench layerbench`` is the CLI.
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from .. import models, registry
from ..dpp import DPP_VARIANTS
from ..measure.shapes import pool_layers
from ..measure.metric_subject import Subject
from ..measure.subject import PASSES, PassSubject, check_amp, paired_ratio, torch_threads
from ..metrics import BASELINE_POOLER, BASELINE_TIER
from ..measure.timing import HOST_BOUND_RATIO, ROUND_STATISTIC, check_timing, combine_rounds, host_bound, peak_memory_bytes, time_rounds
from ..report.tables import markdown_table
from ..validation import pooled_size

__all__ = [
    "BASELINES",
    "PEAK_BANDWIDTH",
    "LayerRow",
    "dpp_tiers",
    "peak_bandwidth",
    "peak_bandwidth_for",
    "run_layerbench",
    "to_frame",
    "to_markdown",
]

#: HBM/GDDR peak bandwidth in bytes/s by device-name fragment, first match wins
#: (so "GH200" is tried before "H200" and "H100 PCIe" before "H100").
PEAK_BANDWIDTH: tuple[tuple[str, float], ...] = (
    ("GH200", 4.0e12),
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM5, "NVIDIA H100 80GB HBM3"
    ("H800", 3.35e12),
    ("B200", 8.0e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("L40", 0.864e12),
    ("A10G", 0.6e12),
    ("A10", 0.6e12),
    ("L4", 0.3e12),
    ("V100", 0.9e12),
    ("RTX 4090", 1.008e12),
    ("RTX 3090", 0.936e12),
)

#: The two baselines every DPP tier is divided by, with the layer's window (kernel, stride, padding).
BASELINES: dict[str, Callable[..., torch.Tensor]] = {
    "avg_pool2d": lambda x, k=2, s=2, p=0: F.avg_pool2d(x, k, s, p, count_include_pad=False),
    "max_pool2d": lambda x, k=2, s=2, p=0: F.max_pool2d(x, k, s, p),
}

DPP_NAMES = tuple(variant.name for variant in DPP_VARIANTS)


def peak_bandwidth_for(name: str) -> float | None:
    """Peak memory bandwidth (bytes/s) for a device name such as "NVIDIA H100 80GB HBM3"; ``None`` if unknown."""
    for fragment, value in PEAK_BANDWIDTH:
        if fragment in name:
            return value
    return None


def peak_bandwidth(device: torch.device | str) -> float | None:
    """Peak memory bandwidth (bytes/s) of a CUDA device, looked up by name; ``None`` if unknown or not CUDA."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_bandwidth_for(torch.cuda.get_device_name(device))


def dpp_tiers(device: torch.device | str, variant: str = "dpp_lite_sym", asked: Iterable[str] | None = None):
    """(available tiers, {unavailable tier: reason}) of ``variant`` on ``device``, in registry order.

    The reference tier (a Python loop over windows, seconds per call at these shapes) is left out unless
    ``asked`` names it (:func:`poolbench.registry.tiers_on`): it is the ground truth, not a contender.
    """
    reasons = registry.tiers_on(variant, device, asked=asked)
    return [tier for tier, reason in reasons.items() if reason is None], {t: r for t, r in reasons.items() if r}


@dataclass
class LayerRow:
    """One (layer, pooler) cell of the table; ratios are to the baselines of the same layer in the same run."""

    layer: int
    shape: tuple[int, int, int, int]
    pooler: str  # "avg_pool2d", "max_pool2d" or "<dpp variant>[<tier>]"
    tier: str
    dtype: str
    fwd_vs_avg: float = math.nan
    fwd_vs_max: float = math.nan
    fwdbwd_vs_avg: float = math.nan
    fwdbwd_vs_max: float = math.nan
    fwd_bandwidth: float = math.nan  # bytes/s
    fwdbwd_bandwidth: float = math.nan
    fwd_peak_fraction: float = math.nan  # of the device's peak bandwidth (CUDA, known cards)
    fwdbwd_peak_fraction: float = math.nan
    saved_vs_avg: float = math.nan  # autograd-saved bytes / avg_pool2d's
    peak_memory_vs_avg: float = math.nan  # extra peak CUDA memory over fwd+bwd / avg_pool2d's
    # --timing graph: the same ratios from CUDA-graph replays (device time alone), and the host-bound flag
    fwd_graph_vs_avg: float = math.nan
    fwdbwd_graph_vs_avg: float = math.nan
    fwdbwd_graph_vs_max: float = math.nan
    host_bound: bool | None = None  # eager ≥ HOST_BOUND_RATIO × graph in either pass; None without graph timing
    # how it was measured (also in the report header): timing mode, autocast, memory format
    timing: str = "eager"
    amp: str = "off"
    channels_last: bool = False
    error: str = ""
    # raw measurements, kept for the JSON/frame form (the markdown shows ratios only)
    fwd_ms: float = math.nan
    fwdbwd_ms: float = math.nan
    fwd_graph_ms: float = math.nan
    fwdbwd_graph_ms: float = math.nan
    saved_bytes: float = math.nan
    peak_memory_bytes: float = math.nan
    notes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _traffic_bytes(shape, dtype: torch.dtype, window=(2, 2, 0)) -> tuple[int, int]:
    """Minimal bytes moved by a fused pooler: forward (x in, y out) and forward+backward."""
    n, c, h, w = shape
    size = torch.tensor([], dtype=dtype).element_size()
    x_bytes = n * c * h * w * size
    y_bytes = n * c * pooled_size(h, *window) * pooled_size(w, *window) * size
    forward = x_bytes + y_bytes
    backward = y_bytes + x_bytes + x_bytes  # read ∂y and x, write ∂x
    return forward, forward + backward


def _error(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


@dataclass
class _Plan:
    """What one layerbench run measures (validated), and how."""

    device: torch.device
    batch: int
    dtype: torch.dtype
    resolution: int
    variants: tuple[str, ...]
    tiers: list[str]
    skipped: dict[str, str]
    layers: list[int]
    min_run_time: float
    repeats: int
    statistic: str
    model: str = "vgg16"
    peak: float | None = None
    timing: str = "eager"
    amp: str = "off"
    channels_last: bool = False
    started: float = field(default_factory=time.time)

    @property
    def timings(self) -> tuple[str, ...]:
        """The timing modes measured: eager always, graph replays too with ``timing="graph"``."""
        return ("eager", "graph") if self.timing == "graph" else ("eager",)

    def combine(self, medians: Sequence[float]) -> float:
        return combine_rounds(medians, self.statistic)

    def shape(self, layer: int) -> tuple[int, int, int, int]:
        return pool_layers(self.model, self.batch, self.resolution)[layer - 1][0]

    def window(self, layer: int) -> tuple[int, int, int]:
        """(kernel_size, stride, padding) of ``layer``."""
        return pool_layers(self.model, self.batch, self.resolution)[layer - 1][1]

    def meta(self) -> dict:
        return {
            "device": _device_name(self.device), "device_type": self.device.type, "peak_bandwidth": self.peak,
            "batch": self.batch, "resolution": self.resolution, "model": self.model,
            "windows": sorted({f"{k}×{k}/{s} pad {p}" for _, (k, s, p) in pool_layers(self.model, 1, self.resolution)}),
            "dtype": str(self.dtype).replace("torch.", ""),
            "variants": list(self.variants), "tiers": self.tiers, "skipped_tiers": self.skipped,
            "threads": torch.get_num_threads(), "repeats": self.repeats, "statistic": self.statistic,
            "min_run_time": self.min_run_time, "torch": torch.__version__,
            "timing": self.timing, "amp": self.amp, "channels_last": self.channels_last,
            "seconds": round(time.time() - self.started, 1),
        }


def run_layerbench(
    device: torch.device | str = "cpu",
    batch: int = 2,
    dtype: torch.dtype = torch.float32,
    tiers: Iterable[str] | None = None,
    variants: Iterable[str] = ("dpp_lite_sym",),
    resolution: int = 224,
    layers: Iterable[int] | None = None,
    min_run_time: float = 0.2,
    repeats: int = 3,
    statistic: str = ROUND_STATISTIC,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    on_layer: Callable[[list[LayerRow], dict], None] | None = None,
    model: str = "vgg16",
    timing: str = "eager",
    amp: str = "off",
    channels_last: bool = False,
) -> tuple[list[LayerRow], dict]:
    """Measure every available DPP tier at VGG-16's pooling shapes; returns (rows, run metadata).

    Args:
        tiers: tiers to run (default: every registered tier available on
            ``device`` except ``reference``); unknown or unavailable ones are
            reported in the metadata, not run.
        variants: DPP variants (default Lite-DPP-Sym, the variant the
            performance targets use).
        layers: 1-based pooling layers of ``model`` to run (default all).
        model: whose pooling layers: "vgg16" (five 2×2/2 layers) or "resnet50" (the 3×3/2 pad 1
            stem and three 2×2/2 block inputs); see :func:`poolbench.measure.shapes.pool_layers`.
        min_run_time: seconds of timing per measurement.
        repeats: rounds per layer; each round times every subject (baselines
            and tiers, interleaved) once, so load that drifts during the run (a
            shared machine) hits baselines and tiers alike.
        statistic: how rounds are combined into each subject's time (which
            the bandwidth columns use): "min" (default, the timing policy's:
            the least-disturbed round) or "median".  Speed ratios are always the median over
            rounds of the per-round ratio to the baseline timed in that round.
        threads: CPU threads for the run (``torch.set_num_threads``); default
            torch's current setting.
        progress: called with a line of text before each measurement.
        on_layer: called with (rows so far, metadata) after each layer, so a
            caller can keep a partial report if the run is cut short.
        timing: "eager" or "graph" (CUDA only: eager *and* CUDA-graph replays, the
            device time alone; rows where eager is well above graph are flagged host-bound).
        amp: "off", "bf16" or "fp16": every subject's forward under ``torch.autocast``.
        channels_last: inputs and modules in channels-last memory format.

    Timing follows the measurement core's one policy
    (:func:`poolbench.measure.timing.time_rounds`): every subject of a layer is
    timed once per round, interleaved; ratios are paired per round.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if statistic not in ("median", "min"):
        raise ValueError(f"statistic must be 'median' or 'min', got {statistic!r}")
    check_timing(timing, device)
    check_amp(amp)
    with torch_threads(threads):
        plan = _plan(torch.device(device), batch, dtype, tiers, tuple(variants), resolution, layers, min_run_time,
                     repeats, statistic, model)
        plan.timing, plan.amp, plan.channels_last = timing, amp, bool(channels_last)
        say = progress or (lambda message: None)
        rows: list[LayerRow] = []
        for layer in plan.layers:
            rows += _measure_layer(plan, layer, say)
            if plan.device.type == "cuda":
                torch.cuda.empty_cache()
            if on_layer is not None:
                on_layer(list(rows), plan.meta())
        return rows, plan.meta()


def _plan(device, batch, dtype, tiers, variants, resolution, layers, min_run_time, repeats, statistic,
          model) -> _Plan:
    for variant in variants:
        if variant not in DPP_NAMES or variant.startswith("s3"):
            raise ValueError(f"unknown DPP variant {variant!r}; choose from {', '.join(DPP_NAMES[:4])}")
    count = len(pool_layers(model, batch, resolution))
    chosen_layers = sorted(set(layers)) if layers else list(range(1, count + 1))
    for layer in chosen_layers:
        if not 1 <= layer <= count:
            raise ValueError(f"layer must be in 1..{count}, got {layer}")
    available, skipped = dpp_tiers(device, variants[0], asked=tiers)
    if tiers is not None:
        wanted = list(dict.fromkeys(tiers))
        registry.check_tier_names(wanted)
        skipped = {t: r for t, r in skipped.items() if t in wanted}
        for tier in wanted:
            if tier not in available and tier not in skipped:
                skipped[tier] = f"{variants[0]} has no {tier!r} tier registered"
        available = [t for t in wanted if t in available]
    return _Plan(device, batch, dtype, resolution, variants, available, skipped, chosen_layers, min_run_time,
                 repeats, statistic, model, peak_bandwidth(device))


def _site(plan: _Plan, layer: int) -> models.PoolSite:
    """The first pooling site of ``plan.model`` whose input shape and window are ``layer``'s."""
    wanted = (plan.shape(layer), plan.window(layer))
    return next(site for site, shape in models.layer_input_shapes(plan.model, plan.batch, plan.resolution)
                if (tuple(shape), site.geometry) == wanted)


#: The comparators as the run's layer scope builds them: (label, pooler, tier).
COMPARATORS = (("avg_pool2d", "avg", "vectorized"), ("max_pool2d", BASELINE_POOLER, BASELINE_TIER))


def _subjects(plan: _Plan, layer: int) -> list[tuple[LayerRow, PassSubject | None]]:
    """The comparators, then every variant × tier: ``poolbench run``'s layer-scope subjects of this layer.

    Each is a :class:`poolbench.measure.metric_subject.Subject` of scope ``layer`` — the module,
    input (a ReLU'd Gaussian, as every pooling site here follows a ReLU; the same seed, so the same
    values, for every subject of the layer), dtype, autocast and memory format exactly as the run
    measures that layer — and its :class:`PassSubject` passes.  A failing build keeps its error.
    """
    shape, site = plan.shape(layer), _site(plan, layer)
    dtype_name = str(plan.dtype).replace("torch.", "")
    settings = {"timing": plan.timing, "amp": plan.amp, "channels_last": plan.channels_last}
    wanted = [(label, pooler, tier, tier if pooler != BASELINE_POOLER else "aten") for label, pooler, tier in COMPARATORS]
    wanted += [(f"{variant}[{tier}]", variant, tier, tier) for variant in plan.variants for tier in plan.tiers]
    subjects: list[tuple[LayerRow, PassSubject | None]] = []
    for label, pooler, tier, row_tier in wanted:
        row = LayerRow(layer, shape, label, "aten" if label in BASELINES else row_tier, dtype_name, **settings)
        subject = Subject(plan.model, pooler, tier, "layer", device=plan.device, batch=plan.batch,
                          resolution=plan.resolution, sites=[site], shape=shape, layer=site.name, dtype=plan.dtype,
                          seed=layer, amp=plan.amp, channels_last=plan.channels_last)
        try:
            subjects.append((row, subject.passes))
        except Exception as exc:  # a failing cell keeps its error; the run goes on
            row.error = _error(exc)
            subjects.append((row, None))
    return subjects


def _measure_layer(plan: _Plan, layer: int, say: Callable[[str], None]) -> list[LayerRow]:
    """Time every subject of ``layer`` in interleaved rounds (the core's policy), then memory and the ratios.

    ``timings[(id(row), timing)]`` holds (forward, forward+backward) round medians per timing mode.
    """
    subjects = _subjects(plan, layer)
    live = [(row, subject) for row, subject in subjects if subject is not None and not row.error]
    steps = {(id(row), pass_): subject.step(pass_) for row, subject in live for pass_ in PASSES}
    labels = {id(row): row.pooler for row, _ in live}
    timings: dict = {}
    for timing in plan.timings:
        def progress(key, round_index, timing=timing):
            say(f"layer {layer} {tuple(plan.shape(layer))} {timing} round {round_index + 1}/{plan.repeats}: "
                f"{labels[key[0]]} {key[1]}")

        times, errors = time_rounds(steps, plan.device, rounds=plan.repeats, min_run_time=plan.min_run_time,
                                    timing=timing, on_call=progress)
        for row, _ in live:
            failed = [errors[(id(row), pass_)] for pass_ in PASSES if (id(row), pass_) in errors]
            if failed and not row.error:
                row.error = failed[0] if timing == "eager" else f"graph timing: {failed[0]}"
            timings[(id(row), timing)] = tuple(times[(id(row), pass_)] for pass_ in PASSES)
    for row, subject in live:
        if row.error:
            continue
        try:
            row.fwd_ms, row.fwdbwd_ms = map(plan.combine, timings[(id(row), "eager")])
            if "graph" in plan.timings:
                row.fwd_graph_ms, row.fwdbwd_graph_ms = map(plan.combine, timings[(id(row), "graph")])
                row.host_bound = host_bound(row.fwd_ms, row.fwd_graph_ms) or host_bound(row.fwdbwd_ms,
                                                                                         row.fwdbwd_graph_ms)
            row.saved_bytes = subject.saved_bytes()
            peak_bytes = peak_memory_bytes(subject.closure("forward_backward"), plan.device)
            row.peak_memory_bytes = math.nan if peak_bytes is None else peak_bytes
        except Exception as exc:
            row.error = _error(exc)
    rows = [row for row, _ in subjects]
    _fill_ratios(plan, rows, timings)
    return rows


def _fill_ratios(plan: _Plan, rows: list[LayerRow], timings: dict) -> None:
    """Speed ratios (paired per round) to avg_pool2d and max_pool2d, bandwidth and memory ratios."""
    avg, mx = rows[0], rows[1]  # the BASELINES, in order
    fwd_bytes, fwdbwd_bytes = _traffic_bytes(rows[0].shape, plan.dtype, plan.window(rows[0].layer))
    for row in rows:
        if row.error:
            continue
        for timing in plan.timings:
            mine, on_avg, on_max = (timings.get((id(r), timing), ((), ())) for r in (row, avg, mx))
            suffix = "" if timing == "eager" else "_graph"
            for which, name in enumerate(("fwd", "fwdbwd")):
                if hasattr(row, f"{name}{suffix}_vs_avg"):
                    setattr(row, f"{name}{suffix}_vs_avg", paired_ratio(mine[which], on_avg[which]))
                if hasattr(row, f"{name}{suffix}_vs_max"):
                    setattr(row, f"{name}{suffix}_vs_max", paired_ratio(mine[which], on_max[which]))
        row.fwd_bandwidth = fwd_bytes / (row.fwd_ms * 1e-3)
        row.fwdbwd_bandwidth = fwdbwd_bytes / (row.fwdbwd_ms * 1e-3)
        if plan.peak is not None:
            row.fwd_peak_fraction = row.fwd_bandwidth / plan.peak
            row.fwdbwd_peak_fraction = row.fwdbwd_bandwidth / plan.peak
        row.saved_vs_avg = row.saved_bytes / avg.saved_bytes if avg.saved_bytes else math.nan
        row.peak_memory_vs_avg = (row.peak_memory_bytes / avg.peak_memory_bytes
                                  if avg.peak_memory_bytes and not math.isnan(avg.peak_memory_bytes) else math.nan)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({platform.processor() or platform.machine()}, {threads} thread{'s' if threads != 1 else ''})"


COLUMNS = (
    ("layer", "layer"),
    ("shape", "N×C×H×W"),
    ("pooler", "pooler[tier]"),
    ("fwd_vs_avg", "fwd / avg"),
    ("fwd_vs_max", "fwd / max"),
    ("fwdbwd_vs_avg", "fwd+bwd / avg"),
    ("fwdbwd_vs_max", "fwd+bwd / max"),
    ("fwd_bandwidth", "fwd GB/s"),
    ("fwd_peak_fraction", "fwd % peak"),
    ("fwdbwd_bandwidth", "fwd+bwd GB/s"),
    ("fwd_graph_vs_avg", "fwd graph / avg"),
    ("fwdbwd_graph_vs_avg", "fwd+bwd graph / avg"),
    ("fwdbwd_graph_vs_max", "fwd+bwd graph / max"),
    ("host_bound", "host-bound"),
    ("saved_vs_avg", "saved mem / avg"),
    ("peak_memory_vs_avg", "peak mem / avg"),
    ("error", "error"),
)

#: Columns shown only when the run timed CUDA-graph replays (``--timing graph``).
GRAPH_COLUMNS = ("fwd graph / avg", "fwd+bwd graph / avg", "fwd+bwd graph / max", "host-bound")


def to_frame(rows: Sequence[LayerRow]):
    """The table as a pandas DataFrame with display columns (ratios rounded, bandwidth in GB/s)."""
    import pandas as pd

    def fmt(key, value):
        if key == "shape":
            return "×".join(map(str, value))
        if key in ("fwd_bandwidth", "fwdbwd_bandwidth"):
            return "n/a" if math.isnan(value) else f"{value / 1e9:.1f}"
        if key in ("fwd_peak_fraction",):
            return "n/a" if math.isnan(value) else f"{100 * value:.0f}%"
        if key == "host_bound":
            return "n/a" if value is None else ("**yes**" if value else "no")
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.2f}"
        return value

    records = [{title: fmt(key, getattr(row, key)) for key, title in COLUMNS} for row in rows]
    return pd.DataFrame.from_records(records, columns=[title for _, title in COLUMNS])


def to_markdown(rows: Sequence[LayerRow], meta: dict, command: str = "") -> str:
    """A self-describing markdown report: run settings, the table, what was skipped and why."""
    frame = to_frame(rows)
    if not any(row.error for row in rows):
        frame = frame.drop(columns=["error"])
    if meta.get("timing", "eager") != "graph":
        frame = frame.drop(columns=list(GRAPH_COLUMNS))
    peak = meta.get("peak_bandwidth")
    lines = [
        f"# DPP layer benchmark — {meta['device']}",
        "",
        f"{models.title(meta.get('model', 'vgg16'))} pooling layers "
        f"({', '.join(meta.get('windows', ['2×2/2 pad 0']))} windows) at batch {meta['batch']}, {meta['resolution']}² input, "
        f"{meta['dtype']}; timing {meta.get('timing', 'eager')}, autocast {meta.get('amp', 'off')}, "
        f"channels-last {meta.get('channels_last', False)}; variants: {', '.join(meta['variants'])}; torch {meta['torch']}; "
        f"CPU threads: {meta['threads']}; {meta.get('statistic', 'median')} of {meta['repeats']} interleaved rounds of "
        f"{meta['min_run_time']} s per measurement; {meta['seconds']} s in all.",
        "",
        "Speed is latency divided by `avg_pool2d` / `max_pool2d` measured in the same run, layer by layer: the "
        "median over rounds of each round's ratio (lower is better; 1.00 = as fast as the baseline). Bandwidth = the bytes a fused kernel must move "
        "(forward: read x, write y; forward+backward: also read x and ∂y, write ∂x) / median time"
        + (f"; peak for this device: {peak / 1e12:.2f} TB/s." if peak else "; % peak is n/a (not a CUDA device "
                                                                          "with a known peak).")
        + (f" Graph columns: the same ratios from CUDA-graph replays (the device work alone, no host path); "
           f"a row is host-bound when its eager time is at least {HOST_BOUND_RATIO}× its graph time."
           if meta.get("timing") == "graph" else "")
        + " Memory: bytes autograd saves for backward, and (CUDA only) the extra peak allocated memory over a "
        "forward+backward, each divided by `avg_pool2d`'s.",
        "",
    ]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines.append(markdown_table(frame))
    skipped = meta.get("skipped_tiers") or {}
    if skipped:
        lines += ["", "Tiers not run on this device:", ""]
        lines += [f"- `{tier}`: {reason}" for tier, reason in skipped.items()]
    lines.append("")
    return "\n".join(lines)
