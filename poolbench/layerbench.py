"""Per-layer DPP benchmark: every DPP tier against ``avg_pool2d`` and ``max_pool2d``.

At the pooling shapes of VGG-16 (five 2×2/2 layers) or ResNet-50 (the 3×3/2
pad 1 stem and three 2×2/2 block inputs; :func:`poolbench.shapes.pool_layers`) and for every registered DPP tier that can run on the
device (so tiers added later join automatically), one run measures:

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

import functools
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from . import registry
from .dpp import DPP_VARIANTS
from .shapes import pool_layers
from .timing import measure_latency, peak_memory_bytes, saved_tensor_bytes
from .validation import pooled_size

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


def dpp_tiers(device: torch.device | str, variant: str = "dpp_lite_sym", include_reference: bool = False):
    """(available tiers, {unavailable tier: reason}) of ``variant`` on ``device``, in registry order.

    The reference tier (a Python loop over windows, seconds per call at these
    shapes) is left out unless asked for: it is the ground truth, not a contender.
    """
    available, skipped = [], {}
    for tier in registry.tiers(variant):
        if tier == "reference" and not include_reference:
            continue
        reason = registry.unavailable_reason(variant, tier, device)
        if reason is None:
            available.append(tier)
        else:
            skipped[tier] = reason
    return available, skipped


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
    error: str = ""
    # raw measurements, kept for the JSON/frame form (the markdown shows ratios only)
    fwd_ms: float = math.nan
    fwdbwd_ms: float = math.nan
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


def _measure(fn: Callable[[], object], device, min_run_time: float) -> float:
    return measure_latency(fn, device, min_run_time=min_run_time).median_ms


class _Subject:
    """A callable pooler plus the closures timed for it (set-up stays outside the timed region)."""

    def __init__(self, pool: Callable[[torch.Tensor], torch.Tensor], params: Sequence[torch.Tensor],
                 x: torch.Tensor, grad_out: torch.Tensor):
        self.pool, self.params = pool, list(params)
        self.x = x
        self.x_train = x.detach().clone().requires_grad_()
        self.grad_out = grad_out

    def forward(self):
        with torch.no_grad():
            return self.pool(self.x)

    def train_step(self):
        y = self.pool(self.x_train)
        return torch.autograd.grad(y, [self.x_train, *self.params], self.grad_out)

    def saved_bytes(self) -> int:
        return saved_tensor_bytes(lambda: self.pool(self.x_train))


def _error(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


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
    statistic: str = "median",
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    on_layer: Callable[[list[LayerRow], dict], None] | None = None,
    model: str = "vgg16",
) -> tuple[list[LayerRow], dict]:
    """Measure every available DPP tier at VGG-16's pooling shapes; returns (rows, run metadata).

    Args:
        tiers: tiers to run (default: every registered tier available on
            ``device`` except ``reference``); unknown or unavailable ones are
            reported in the metadata, not run.
        variants: DPP variants (default Lite-DPP-Sym, the variant the
            performance anchors use).
        layers: 1-based pooling layers of ``model`` to run (default all).
        model: whose pooling layers: "vgg16" (five 2×2/2 layers) or "resnet50" (the 3×3/2 pad 1
            stem and three 2×2/2 block inputs); see :func:`poolbench.shapes.pool_layers`.
        min_run_time: seconds of timing per measurement.
        repeats: rounds per layer; each round times every subject (baselines
            and tiers, interleaved) once and the median over rounds is kept, so
            load that drifts during the run (a shared machine) hits baselines
            and tiers alike.
        statistic: how rounds are combined into each subject's time (which
            the bandwidth columns use): "median" (default) or "min" (the
            least-disturbed round).  Speed ratios are always the median over
            rounds of the per-round ratio to the baseline timed in that round.
        threads: CPU threads for the run (``torch.set_num_threads``); default
            torch's current setting.
        progress: called with a line of text before each measurement.
        on_layer: called with (rows so far, metadata) after each layer, so a
            caller can keep a partial report if the run is cut short.
    """
    device = torch.device(device)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if statistic not in ("median", "min"):
        raise ValueError(f"statistic must be 'median' or 'min', got {statistic!r}")
    combine = statistics.median if statistic == "median" else min
    previous_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        return _run(device, batch, dtype, tiers, variants, resolution, layers, min_run_time, repeats, statistic,
                    combine, progress, on_layer, model)
    finally:
        torch.set_num_threads(previous_threads)


def _run(device, batch, dtype, tiers, variants, resolution, layers, min_run_time, repeats, statistic, combine,
         progress, on_layer, model="vgg16"):
    variants = tuple(variants)
    for variant in variants:
        if variant not in DPP_NAMES or variant.startswith("s3"):
            raise ValueError(f"unknown DPP variant {variant!r}; choose from {', '.join(DPP_NAMES[:4])}")
    layer_specs = pool_layers(model, batch, resolution)
    shapes = [shape for shape, _ in layer_specs]
    chosen_layers = sorted(set(layers)) if layers else list(range(1, len(shapes) + 1))
    for layer in chosen_layers:
        if not 1 <= layer <= len(shapes):
            raise ValueError(f"layer must be in 1..{len(shapes)}, got {layer}")
    available, skipped = dpp_tiers(device, variants[0], include_reference=tiers is not None and "reference" in tiers)
    if tiers is not None:
        wanted = list(dict.fromkeys(tiers))
        unknown = [t for t in wanted if t not in registry.TIERS]
        if unknown:
            raise ValueError(f"unknown tier(s) {', '.join(unknown)}; tiers are {', '.join(registry.TIERS)}")
        skipped = {t: r for t, r in skipped.items() if t in wanted}
        for tier in wanted:
            if tier not in available and tier not in skipped:
                skipped[tier] = f"{variants[0]} has no {tier!r} tier registered"
        available = [t for t in wanted if t in available]
    peak = peak_bandwidth(device)
    say = progress or (lambda message: None)
    rows: list[LayerRow] = []
    started = time.time()

    def meta() -> dict:
        return {
            "device": _device_name(device),
            "device_type": device.type,
            "peak_bandwidth": peak,
            "batch": batch,
            "resolution": resolution,
            "model": model,
            "windows": sorted({f"{k}×{k}/{s} pad {p}" for _, (k, s, p) in layer_specs}),
            "dtype": str(dtype).replace("torch.", ""),
            "variants": list(variants),
            "tiers": available,
            "skipped_tiers": skipped,
            "threads": torch.get_num_threads(),
            "repeats": repeats,
            "statistic": statistic,
            "min_run_time": min_run_time,
            "torch": torch.__version__,
            "seconds": round(time.time() - started, 1),
        }

    for layer in chosen_layers:
        shape, window = layer_specs[layer - 1]
        fwd_bytes, fwdbwd_bytes = _traffic_bytes(shape, dtype, window)
        generator = torch.Generator(device="cpu").manual_seed(layer)
        x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        pooled = [pooled_size(size, *window) for size in shape[2:]]
        grad_out = torch.randn(shape[0], shape[1], *pooled, generator=generator).to(device=device, dtype=dtype)
        dtype_name = str(dtype).replace("torch.", "")
        subjects: list[tuple[LayerRow, _Subject | None]] = []
        for name, pool in BASELINES.items():
            subjects.append((LayerRow(layer, shape, name, "aten", dtype_name),
                             _Subject(functools.partial(pool, k=window[0], s=window[1], p=window[2]), [], x, grad_out)))
        for variant in variants:
            for tier in available:
                row = LayerRow(layer, shape, f"{variant}[{tier}]", tier, dtype_name)
                try:
                    module = registry.create(variant, shape[1], *window, tier=tier, device=device)
                    subjects.append((row, _Subject(module, list(module.parameters()), x, grad_out)))
                except Exception as exc:  # a failing cell keeps its error; the run goes on
                    row.error = _error(exc)
                    subjects.append((row, None))
        timings = {id(row): ([], []) for row, _ in subjects}
        for round_index in range(repeats):
            for row, subject in subjects:
                if subject is None or row.error:
                    continue
                say(f"layer {layer} {tuple(shape)} round {round_index + 1}/{repeats}: {row.pooler}")
                try:
                    timings[id(row)][0].append(_measure(subject.forward, device, min_run_time))
                    timings[id(row)][1].append(_measure(subject.train_step, device, min_run_time))
                except Exception as exc:
                    row.error = _error(exc)
        for row, subject in subjects:
            if subject is not None and not row.error:
                try:
                    row.fwd_ms = combine(timings[id(row)][0])
                    row.fwdbwd_ms = combine(timings[id(row)][1])
                    row.saved_bytes = subject.saved_bytes()
                    peak_bytes = peak_memory_bytes(subject.train_step, device)
                    row.peak_memory_bytes = math.nan if peak_bytes is None else peak_bytes
                except Exception as exc:
                    row.error = _error(exc)
            rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        baseline_rows = {row.pooler: row for row, _ in subjects[:len(BASELINES)]}
        avg, mx = baseline_rows["avg_pool2d"], baseline_rows["max_pool2d"]

        def paired_ratio(row: LayerRow, baseline: LayerRow, which: int) -> float:
            # median over rounds of (this round's time / the baseline's time in the same round):
            # both were timed seconds apart, so load drift and one-off outliers cancel
            mine, theirs = timings[id(row)][which], timings[id(baseline)][which]
            ratios = [a / b for a, b in zip(mine, theirs) if b > 0]
            return statistics.median(ratios) if ratios and len(mine) == len(theirs) else math.nan

        for row, _ in subjects:
            if row.error:
                continue
            row.fwd_vs_avg = paired_ratio(row, avg, 0)
            row.fwd_vs_max = paired_ratio(row, mx, 0)
            row.fwdbwd_vs_avg = paired_ratio(row, avg, 1)
            row.fwdbwd_vs_max = paired_ratio(row, mx, 1)
            row.fwd_bandwidth = fwd_bytes / (row.fwd_ms * 1e-3)
            row.fwdbwd_bandwidth = fwdbwd_bytes / (row.fwdbwd_ms * 1e-3)
            if peak is not None:
                row.fwd_peak_fraction = row.fwd_bandwidth / peak
                row.fwdbwd_peak_fraction = row.fwdbwd_bandwidth / peak
            row.saved_vs_avg = row.saved_bytes / avg.saved_bytes if avg.saved_bytes else math.nan
            row.peak_memory_vs_avg = (row.peak_memory_bytes / avg.peak_memory_bytes
                                      if avg.peak_memory_bytes and not math.isnan(avg.peak_memory_bytes) else math.nan)
        if on_layer is not None:
            on_layer(list(rows), meta())
    return rows, meta()


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
    ("saved_vs_avg", "saved mem / avg"),
    ("peak_memory_vs_avg", "peak mem / avg"),
    ("error", "error"),
)


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
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.2f}"
        return value

    records = [{title: fmt(key, getattr(row, key)) for key, title in COLUMNS} for row in rows]
    return pd.DataFrame.from_records(records, columns=[title for _, title in COLUMNS])


def _markdown_table(frame) -> str:
    """``DataFrame.to_markdown`` (tabulate), or a plain pipe table where tabulate is not installed."""
    try:
        return frame.to_markdown(index=False)
    except ImportError:
        header = "| " + " | ".join(map(str, frame.columns)) + " |"
        rule = "|" + "|".join("---" for _ in frame.columns) + "|"
        body = ["| " + " | ".join(map(str, values)) + " |" for values in frame.itertuples(index=False)]
        return "\n".join([header, rule, *body])


_MODEL_TITLES = {"vgg16": "VGG-16", "resnet50": "ResNet-50"}


def to_markdown(rows: Sequence[LayerRow], meta: dict, command: str = "") -> str:
    """A self-describing markdown report: run settings, the table, what was skipped and why."""
    frame = to_frame(rows)
    if not any(row.error for row in rows):
        frame = frame.drop(columns=["error"])
    peak = meta.get("peak_bandwidth")
    lines = [
        f"# DPP layer benchmark — {meta['device']}",
        "",
        f"{_MODEL_TITLES.get(meta.get('model', 'vgg16'), meta.get('model'))} pooling layers "
        f"({', '.join(meta.get('windows', ['2×2/2 pad 0']))} windows) at batch {meta['batch']}, {meta['resolution']}² input, "
        f"{meta['dtype']}; variants: {', '.join(meta['variants'])}; torch {meta['torch']}; "
        f"CPU threads: {meta['threads']}; {meta.get('statistic', 'median')} of {meta['repeats']} interleaved rounds of "
        f"{meta['min_run_time']} s per measurement; {meta['seconds']} s in all.",
        "",
        "Speed is latency divided by `avg_pool2d` / `max_pool2d` measured in the same run, layer by layer: the "
        "median over rounds of each round's ratio (lower is better; 1.00 = as fast as the baseline). Bandwidth = the bytes a fused kernel must move "
        "(forward: read x, write y; forward+backward: also read x and ∂y, write ∂x) / median time"
        + (f"; peak for this device: {peak / 1e12:.2f} TB/s." if peak else "; % peak is n/a (not a CUDA device "
                                                                          "with a known peak).")
        + " Memory: bytes autograd saves for backward, and (CUDA only) the extra peak allocated memory over a "
        "forward+backward, each divided by `avg_pool2d`'s.",
        "",
    ]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines.append(_markdown_table(frame))
    skipped = meta.get("skipped_tiers") or {}
    if skipped:
        lines += ["", "Tiers not run on this device:", ""]
        lines += [f"- `{tier}`: {reason}" for tier, reason in skipped.items()]
    lines.append("")
    return "\n".join(lines)
