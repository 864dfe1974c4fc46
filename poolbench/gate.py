"""The benchmark regression gate: every pooler × tier, timed as a ratio to ``avg_pool2d``.

Why ratios: absolute times move with the machine, its load and its thread
count; the time of a pooler divided by the time of ATen's ``avg_pool2d`` on
the same input, measured in the same session, survives a noisy or different
machine far better.  The gate stores these ratios (pytest-benchmark JSON,
``extra_info["ratio"]``) as a baseline in the repository and fails when a
ratio grows by more than a threshold (default 10%).

How a ratio is measured (``time_case``): one ``benchmark.pedantic`` round is a
single pooler call, and before each round the ``setup`` hook times one
``avg_pool2d`` call on the same input and pass; the ratio is the median of the
pooler rounds over the median of the interleaved comparator calls.  A burst of
load from another process slows both sides alike, so it cancels.

Equivalence: before a tier is timed, its output (and, when differentiable,
the gradients of input and parameters) must match the pooler's reference
within :mod:`poolbench.tolerances`; a mismatch fails the test and the gate.

The pieces:

* :func:`bench_cases` – the registry-driven case list (pooler × tier × VGG-16
  layer × pass); new poolers and tiers join automatically;
* :func:`check_equivalence`, :func:`pass_closure`, :func:`time_case` – used
  by the pytest-benchmark suite in ``tests/benchmarks``;
* :func:`run_suite` – runs that suite in a subprocess, collects its JSON;
* :func:`compare` – baseline ratios against current ratios;
* :func:`run_gate` – the whole gate (run, confirm suspects, compare, report),
  behind ``poolbench compare``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from . import registry
from .shapes import vgg16_pool_shapes
from .timing import synchronize
from .tolerances import assert_close, tolerance
from .validation import pooled_size

__all__ = [
    "COMPARATOR",
    "PASSES",
    "BenchCase",
    "BenchConfig",
    "CaseResult",
    "Comparison",
    "Equivalence",
    "GroupRow",
    "GateOptions",
    "GateResult",
    "SuiteRun",
    "bench_cases",
    "check_equivalence",
    "compare",
    "baseline_name",
    "find_baseline",
    "load_benchmarks",
    "merge_runs",
    "pass_closure",
    "render_markdown",
    "run_gate",
    "run_suite",
    "save_baseline",
    "time_case",
]

#: What every ratio is relative to: ATen's average pooling on the same input and pass.
COMPARATOR = "avg_pool2d"
#: "forward" is inference (eval mode, no autograd); "forward_backward" is a training step's
#: pooling work: train-mode forward plus the gradients of the input and every parameter.
PASSES = ("forward", "forward_backward")
#: VGG-16's pooling layers are all MaxPool2d(2, 2).
KERNEL_SIZE, STRIDE, PADDING = 2, 2, 0

DEFAULT_THRESHOLD = 0.10
DEFAULT_BASELINE_DIR = Path("benchmarks") / "baselines"
DEFAULT_REPORT = Path("reports") / "bench_compare.md"
SUITE_DIR = Path("tests") / "benchmarks"
#: Environment of the benchmark process (unless already set).  glibc's malloc is told to keep
#: what is freed (no trimming, 1 GiB of top padding, a fixed mmap threshold), so that the
#: large tensors of the first layers are reused instead of page-faulted in on every call.
#: Without it, page faults were half of a pooler's CPU time at 1x64x224x224 and how many
#: there were depended on what the process had allocated before: a pooler's ratio moved by
#: up to 90% between two unchanged runs.
SUITE_ENV = {
    "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30),
    "MALLOC_TOP_PAD_": str(2**30),
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
}
SUITE_FILE = SUITE_DIR / "test_bench_poolers.py"


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class BenchConfig:
    """How the suite measures; stored in every benchmark's ``extra_info`` and compared.

    ``batch`` and ``resolution`` pick the VGG-16 pooling shapes
    (:func:`poolbench.shapes.vgg16_pool_shapes`); ``threads`` is the CPU
    thread count (1 by default: on a shared 2-core machine a second thread
    mostly measures the neighbours); ``budget_s`` is the time one case may
    spend timing (pooler + comparator), within ``min_rounds``–``max_rounds``;
    ``crop`` bounds the spatial size at which slow float64 reference tiers
    are run for the equivalence check.
    """

    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    resolution: int = 224
    threads: int = 1
    budget_s: float = 0.25
    min_rounds: int = 5
    max_rounds: int = 400
    crop: int = 24
    seed: int = 0
    clock: str = "auto"

    #: Fields that change what a ratio means: a baseline is only comparable when they agree.
    IDENTITY = ("device", "dtype", "batch", "resolution", "threads", "clock")

    def __post_init__(self):
        for name in ("batch", "resolution", "threads", "min_rounds", "max_rounds", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.resolution < 32:
            raise ValueError(f"resolution must be >= 32 so that all five VGG-16 pooling layers exist, got {self.resolution}")
        if not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s!r}")
        if self.max_rounds < self.min_rounds:
            raise ValueError(f"max_rounds ({self.max_rounds}) must be >= min_rounds ({self.min_rounds})")
        if self.crop < 2 * KERNEL_SIZE:
            raise ValueError(f"crop must be at least {2 * KERNEL_SIZE}, got {self.crop}")
        if self.clock not in ("auto", "cpu", "wall"):
            raise ValueError(f"clock must be 'auto', 'cpu' or 'wall', got {self.clock!r}")
        if self.clock == "cpu" and (self.device != "cpu" or self.threads != 1):
            raise ValueError("clock='cpu' (process CPU time) needs device 'cpu' and threads=1: "
                             "GPU work and extra threads do not show in this process's CPU time as wall time")
        if self.clock == "auto":
            # CPU time of a single-threaded CPU run ignores the time other processes hold
            # the core, which on a shared machine is most of the noise.
            object.__setattr__(self, "clock", "cpu" if self.device == "cpu" and self.threads == 1 else "wall")

    @property
    def timer(self) -> Callable[[], float]:
        """The clock every round is read with: ``time.process_time`` ("cpu") or ``time.perf_counter`` ("wall")."""
        return time.process_time if self.clock == "cpu" else time.perf_counter

    @property
    def timer_name(self) -> str:
        return "time.process_time" if self.clock == "cpu" else "time.perf_counter"

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must name a floating point torch dtype, got {self.dtype!r}")
        return dtype

    def identity(self) -> dict:
        return {name: getattr(self, name) for name in self.IDENTITY}

    def shapes(self) -> list[tuple[int, int, int, int]]:
        return vgg16_pool_shapes(self.batch, self.resolution)


@dataclass(frozen=True)
class BenchCase:
    """One timed cell: ``pooler[tier]`` at VGG-16 pooling layer ``layer`` (1-5), one pass."""

    pooler: str
    tier: str
    layer: int
    shape: tuple[int, int, int, int]
    pass_: str
    skip_reason: str | None = None

    @property
    def id(self) -> str:
        # Pooler and tier names are identifiers, so "-" separates the fields unambiguously.
        return f"{self.pooler}-{self.tier}-layer{self.layer}-{self.pass_}"

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.pooler, self.tier, self.layer, self.pass_)

    @property
    def group(self) -> str:
        return group_name(self.layer, self.shape, self.pass_)


def group_name(layer: int, shape: Sequence[int], pass_: str) -> str:
    """pytest-benchmark group: one per VGG-16 pooling shape and pass."""
    return f"layer{layer} {'x'.join(map(str, shape))} {pass_}"


def _split(values: Iterable[str] | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    out = [v.strip() for value in values for v in str(value).split(",") if v.strip()]
    return out or None


def bench_cases(config: BenchConfig, poolers: Iterable[str] | None = None,
                tiers: Iterable[str] | None = None) -> list[BenchCase]:
    """Every registered pooler × tier × VGG-16 layer × pass, for ``config.device``.

    The float64 ``reference`` tier is never timed (it is the ground truth, and
    far too slow).  Tiers that cannot run on the device and the backward pass
    of non-differentiable poolers are returned with a ``skip_reason``, so the
    report says why they were not measured.  Unknown names in ``poolers`` or
    ``tiers`` raise ``ValueError``.
    """
    poolers, tiers = _split(poolers), _split(tiers)
    known = registry.names()
    for name in poolers or ():
        if name not in known:
            raise ValueError(f"unknown pooler {name!r}; known poolers: {', '.join(known)}")
    for tier in tiers or ():
        if tier not in registry.TIERS:
            raise ValueError(f"unknown tier {tier!r}; expected one of {', '.join(registry.TIERS)}")
    cases = []
    for spec in registry.specs():
        if spec.tier == "reference" or (poolers and spec.name not in poolers) or (tiers and spec.tier not in tiers):
            continue
        reason = spec.unavailable_reason(config.device)
        for layer, shape in enumerate(config.shapes(), start=1):
            for pass_ in PASSES:
                skip = reason
                if skip is None and pass_ == "forward_backward" and not spec.differentiable:
                    skip = f"{spec.name} is not differentiable"
                cases.append(BenchCase(spec.name, spec.tier, layer, shape, pass_, skip))
    return cases


def comparator_cases(config: BenchConfig) -> list[BenchCase]:
    """``avg_pool2d`` itself at every layer and pass (absolute times for the report and compare-fail)."""
    return [BenchCase(COMPARATOR, "aten", layer, shape, pass_)
            for layer, shape in enumerate(config.shapes(), start=1) for pass_ in PASSES]


# --------------------------------------------------------------------------- building and running


def make_input(shape: Sequence[int], config: BenchConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """A reproducible standard-normal input: the same for every tier of a layer."""
    generator = torch.Generator().manual_seed(config.seed + 1000 * shape[1] + shape[2])
    x = torch.randn(tuple(shape), generator=generator)
    return x.to(device=device or config.device, dtype=config.torch_dtype)


def build_module(pooler: str, tier: str, channels: int, config: BenchConfig,
                 device: torch.device | str | None = None) -> torch.nn.Module:
    """``pooler[tier]`` with reproducibly perturbed parameters.

    The perturbation moves learned parameters off their initial values (DPP's
    α = λ = 1, LIP's zero conv, ...), so the equivalence check exercises the
    per-channel maths rather than a special case; seeding makes every tier of
    a pooler get the same parameters.
    """
    torch.manual_seed(config.seed)
    module = registry.create(pooler, channels, KERNEL_SIZE, STRIDE, PADDING, tier=tier)
    generator = torch.Generator().manual_seed(config.seed + 1)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dtype.is_floating_point:
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                parameter.add_(0.1 * noise.to(parameter.device))
    device = torch.device(device or config.device)
    return module.to(device=device, dtype=config.torch_dtype)


def _trainable(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def pass_closure(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, pass_: str,
                 params: Sequence[torch.Tensor] = (), module: torch.nn.Module | None = None) -> Callable[[], None]:
    """A zero-argument closure running one ``pass_`` of ``fn`` on ``x`` and waiting for the device.

    ``forward`` runs under ``torch.no_grad`` with ``module`` in eval mode;
    ``forward_backward`` puts ``module`` in train mode and computes the
    gradients of ``x`` and ``params`` with ``torch.autograd.grad`` (no
    ``.grad`` accumulation, which would add work the pooler does not own).
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass must be one of {', '.join(PASSES)}, got {pass_!r}")
    device = x.device
    if pass_ == "forward":
        if module is not None:
            module.eval()

        def forward() -> None:
            with torch.no_grad():
                fn(x)
            synchronize(device)

        return forward
    if module is not None:
        module.train()
    xg = x.detach().requires_grad_(True)
    inputs = [xg, *params]
    with torch.no_grad():
        out_shape = fn(x).shape
    generator = torch.Generator().manual_seed(7)
    grad_out = torch.randn(out_shape, generator=generator).to(device=device, dtype=x.dtype)

    def forward_backward() -> None:
        torch.autograd.grad(fn(xg), inputs, grad_out)
        synchronize(device)

    return forward_backward


def comparator(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, KERNEL_SIZE, STRIDE, PADDING, count_include_pad=False)


def case_closures(case: BenchCase, config: BenchConfig, module: torch.nn.Module | None = None,
                  x: torch.Tensor | None = None) -> tuple[Callable[[], None], Callable[[], None]]:
    """(pooler closure, ``avg_pool2d`` closure) for ``case`` on the same input and pass."""
    x = make_input(case.shape, config) if x is None else x
    reference = pass_closure(comparator, x, case.pass_)
    if case.pooler == COMPARATOR:
        return reference, reference
    module = build_module(case.pooler, case.tier, case.shape[1], config) if module is None else module
    return pass_closure(module, x, case.pass_, _trainable(module), module), reference


class _ComparatorSampler:
    """``pedantic`` setup hook: times one comparator call before each pooler round."""

    def __init__(self, fn: Callable[[], None], timer: Callable[[], float]):
        self.fn, self.timer, self.times = fn, timer, []

    def __call__(self) -> None:
        start = self.timer()
        self.fn()
        self.times.append(self.timer() - start)


def _time_once(fn: Callable[[], None], timer: Callable[[], float] = time.perf_counter) -> float:
    start = timer()
    fn()
    return timer() - start


def time_case(benchmark, fn: Callable[[], None], reference: Callable[[], None], config: BenchConfig,
              warmup: int = 1) -> dict:
    """Time ``fn`` with pytest-benchmark, interleaved with ``reference``; return the ratio info.

    The number of rounds fills ``config.budget_s`` (bounded by min/max
    rounds).  Returns ``{"ratio", "comparator_median_s", "rounds",
    "paired_ratio"}`` (``paired_ratio``: median of per-round ratios, kept for
    judging noise), or ``{}`` when pytest-benchmark is disabled.
    """
    for _ in range(warmup):  # first calls pay one-off costs (torch.compile, allocator growth)
        fn()
        reference()
    probe = _time_once(fn, config.timer) + _time_once(reference, config.timer)
    rounds = int(min(config.max_rounds, max(config.min_rounds, math.ceil(config.budget_s / max(probe, 1e-7)))))
    # Both sides are read with the config's clock; pytest-benchmark keeps its clock in a private
    # attribute, set here so a direct `pytest -m bench` run without --benchmark-timer agrees.
    if hasattr(benchmark, "_timer"):
        benchmark._timer = config.timer
    sampler = _ComparatorSampler(reference, config.timer)
    benchmark.pedantic(fn, setup=sampler, rounds=rounds, warmup_rounds=0, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if not stats:  # --benchmark-disable: the call above ran fn once, as a smoke test
        return {}
    pooler_times = list(stats.stats.data)
    comparator_times = sampler.times[-len(pooler_times):]
    comparator_median = statistics.median(comparator_times)
    return {
        "ratio": statistics.median(pooler_times) / comparator_median,
        "paired_ratio": statistics.median(p / c for p, c in zip(pooler_times, comparator_times)),
        "min_ratio": min(pooler_times) / min(comparator_times),
        "comparator_median_s": comparator_median,
        "rounds": rounds,
    }


# --------------------------------------------------------------------------- equivalence


@dataclass(frozen=True)
class Equivalence:
    """Outcome of comparing one tier with its pooler's reference (stored in ``extra_info``)."""

    ok: bool
    reference: str
    compared: str
    max_abs_error: float | None = None
    message: str = ""

    def as_dict(self) -> dict:
        return {"ok": self.ok, "reference": self.reference, "compared": self.compared,
                "max_abs_error": self.max_abs_error, "message": self.message}


def reference_tier(pooler: str) -> str | None:
    """The tier a pooler's fast tiers are checked against, run in float64 on the CPU.

    The ``reference`` tier when registered; otherwise the first tier (in
    :data:`registry.TIERS` order) that runs on the CPU — for a pooler with a
    single tier that is the tier itself, in float64, which at least proves the
    float32 result is as accurate as the tolerance table demands.
    """
    candidates = registry.tiers(pooler)
    if "reference" in candidates:
        return "reference"
    for tier in candidates:
        if registry.get_spec(pooler, tier).unavailable_reason("cpu") is None:
            return tier
    return None


_REFERENCE_CACHE: dict[tuple, tuple] = {}
_EQUIVALENCE_CACHE: dict[tuple, Equivalence] = {}


def check_equivalence(pooler: str, tier: str, shape: Sequence[int], config: BenchConfig) -> Equivalence:
    """Does ``pooler[tier]`` on ``config.device`` match the float64 reference at ``shape``?

    The tier always runs on the full benchmark input (the same shapes it is
    timed at, so a compiled tier compiles nothing extra).  The slow
    ``reference`` tier runs on the top-left ``crop``×``crop`` corner; the
    outputs away from the crop's far edges (a margin of 2 outputs, enough for
    the 3×3 guides and blurs at stride 2) must then agree with the tier's,
    and so must the gradients of the input and parameters for a gradient
    that is zero outside that region.  If that fast check fails, the reference
    is rerun on the full input before a mismatch is declared, so a pooler
    whose outputs are not local (LIP's instance norm) is never failed wrongly.
    Results are cached per (pooler, tier, shape).
    """
    key = (pooler, tier, tuple(shape), config)
    if key not in _EQUIVALENCE_CACHE:
        _EQUIVALENCE_CACHE[key] = _check_equivalence(pooler, tier, tuple(shape), config)
    return _EQUIVALENCE_CACHE[key]


def _check_equivalence(pooler: str, tier: str, shape: tuple, config: BenchConfig) -> Equivalence:
    ref_tier = reference_tier(pooler)
    if ref_tier is None:
        return Equivalence(False, "none", "nothing",
                           message=f"{pooler} has no tier that runs on the CPU in float64 to check {tier} against")
    label = f"{ref_tier}@float64"
    differentiable = registry.get_spec(pooler, tier).differentiable
    height = shape[2]
    crop = min(height, config.crop) if ref_tier == "reference" else height
    try:
        problem, error = _compare_region(pooler, tier, ref_tier, shape, crop, differentiable, config)
        if problem is not None and crop < height:
            # The fast corner check failed: settle it against the reference on the full input.
            crop = height
            problem, error = _compare_region(pooler, tier, ref_tier, shape, crop, differentiable, config)
    except Exception as exc:  # a tier that crashes is not equivalent; say how it crashed
        return Equivalence(False, label, "crashed",
                           message=f"{pooler}[{tier}] at {_fmt_shape(shape)} crashed: {type(exc).__name__}: {exc}")
    what = ("output+grads" if differentiable else "output") + (
        f" on the {crop}x{crop} corner" if crop < height else " on the full input")
    if problem is None:
        return Equivalence(True, label, what, error)
    return Equivalence(False, label, what, error,
                       f"{pooler}[{tier}] at {_fmt_shape(shape)} does not match {pooler}[{label}] "
                       f"({what}, {config.dtype} tolerances): {problem}")


def _compare_region(pooler, tier, ref_tier, shape, crop, differentiable, config) -> tuple[str | None, float | None]:
    """(None, max |output error|) when tier and reference agree on the region ``crop`` gives, else (why not, ...)."""
    dtype = config.torch_dtype
    module = build_module(pooler, tier, shape[1], config).eval()
    x = make_input(shape, config).requires_grad_(differentiable)
    out = module(x)
    expected = (shape[0], shape[1], pooled_size(shape[2], KERNEL_SIZE, STRIDE, PADDING),
                pooled_size(shape[3], KERNEL_SIZE, STRIDE, PADDING))
    if tuple(out.shape) != expected:
        return f"output shape {tuple(out.shape)}, expected {expected}", None
    ref_out, ref_x_grad, ref_param_grads, grad_out, rows, cols = _reference(
        pooler, ref_tier, module, shape, crop, differentiable, config)
    region = (..., slice(0, rows), slice(0, cols))
    actual = out[region].detach().cpu()
    error = float((actual.double() - ref_out).abs().max())
    try:
        assert_close(actual, ref_out, dtype, "output", msg="output")
        if differentiable:
            params = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
            grads = torch.autograd.grad(out[region], [x, *(p for _, p in params)], grad_out.to(out.device, out.dtype),
                                        allow_unused=True)
            assert_close(grads[0][..., :crop, :crop].cpu(), ref_x_grad, dtype, "grad", msg="gradient of the input")
            for (name, _), grad in zip(params, grads[1:]):
                if name in ref_param_grads and grad is not None:
                    assert_close_normwise(grad.cpu(), ref_param_grads[name], dtype, msg=f"gradient of parameter {name}")
    except AssertionError as exc:
        return " ".join(str(exc).split())[:600], error
    return None, error


def assert_close_normwise(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, msg: str = "") -> None:
    """‖actual − expected‖₂ ≤ rtol·‖expected‖₂ + atol·√numel, with the table's "grad" bounds for ``dtype``.

    Why not element-wise: a parameter's gradient is a sum over every batch
    element and position (3.2 M terms for one per-layer weight at VGG's first
    layer), so a single entry that cancels to near zero carries a float32
    rounding error far above the element-wise bound while the gradient as a
    whole is accurate.  A wrong formula still moves the norm by O(1).
    """
    rtol, atol = tolerance(dtype, "grad")
    error = float((actual.double() - expected.double()).norm())
    bound = rtol * float(expected.double().norm()) + atol * math.sqrt(max(expected.numel(), 1))
    if not error <= bound:
        raise AssertionError(f"{msg}: norm of the difference {error:.3g} exceeds {bound:.3g} "
                             f"(rtol {rtol:g} of the reference norm {float(expected.double().norm()):.3g}, atol {atol:g} per element)")


def _reference(pooler, ref_tier, module, shape, crop, differentiable, config):
    key = (pooler, ref_tier, tuple(shape), crop, differentiable, config)
    if key in _REFERENCE_CACHE:
        return _REFERENCE_CACHE[key]
    reference = build_module(pooler, ref_tier, shape[1], config, device="cpu").double().eval()
    try:  # same parameters as the tier, whatever their initialisation
        reference.load_state_dict({k: v.detach().cpu() for k, v in module.state_dict().items()})
    except (RuntimeError, KeyError):
        pass  # different layouts: both were built from the same seed, so identical modules agree anyway
    x = make_input(shape, config, device="cpu")[..., :crop, :crop].double().requires_grad_(differentiable)
    out = reference(x)
    margin = 2 if crop < shape[2] else 0
    rows, cols = out.shape[-2] - margin, out.shape[-1] - margin
    region = (..., slice(0, rows), slice(0, cols))
    grad_out = torch.randn(out[region].shape, generator=torch.Generator().manual_seed(config.seed + 2), dtype=torch.float64)
    x_grad, param_grads = None, {}
    if differentiable:
        params = [(name, p) for name, p in reference.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(out[region], [x, *(p for _, p in params)], grad_out, allow_unused=True)
        x_grad = grads[0]
        param_grads = {name: g for (name, _), g in zip(params, grads[1:]) if g is not None}
    result = (out[region].detach(), x_grad, param_grads, grad_out, rows, cols)
    _REFERENCE_CACHE[key] = result
    return result


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CaseResult:
    """One benchmark's ratio and context, read from pytest-benchmark JSON."""

    pooler: str
    tier: str
    layer: int
    shape: tuple[int, ...]
    pass_: str
    ratio: float | None
    median_s: float
    comparator_median_s: float | None
    rounds: int
    equivalence: dict | None
    config: dict
    fullname: str

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.pooler, self.tier, self.layer, self.pass_)

    @property
    def label(self) -> str:
        return f"{self.pooler}[{self.tier}] layer{self.layer} {_fmt_shape(self.shape)} {self.pass_}"


def load_benchmarks(data: dict | str | Path) -> dict[tuple, CaseResult]:
    """The gate's benchmarks in a pytest-benchmark JSON document (a path or the parsed dict)."""
    if not isinstance(data, dict):
        data = json.loads(Path(data).read_text())
    results = {}
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info") or {}
        if "pooler" not in info:
            continue  # not one of the gate's benchmarks
        result = CaseResult(
            pooler=info["pooler"], tier=info["tier"], layer=int(info["layer"]), shape=tuple(info["shape"]),
            pass_=info["pass"], ratio=info.get("ratio"), median_s=bench["stats"]["median"],
            comparator_median_s=info.get("comparator_median_s"), rounds=bench["stats"].get("rounds", 0),
            equivalence=info.get("equivalence"), config=info.get("config", {}), fullname=bench.get("fullname", ""),
        )
        results[result.key] = result
    return results


def extra_info(case: BenchCase, config: BenchConfig, equivalence: Equivalence | None, timing: dict) -> dict:
    """What the suite stores with each benchmark."""
    info = {"pooler": case.pooler, "tier": case.tier, "layer": case.layer, "shape": list(case.shape),
            "pass": case.pass_, "comparator": COMPARATOR, "config": config.identity(),
            "torch": torch.__version__}
    if equivalence is not None:
        info["equivalence"] = equivalence.as_dict()
    info.update(timing)
    return info


@dataclass
class Outcome:
    """A test's outcome in the suite run (from the suite's outcome log)."""

    nodeid: str
    outcome: str  # passed | failed | skipped | error
    message: str = ""

    @property
    def case_id(self) -> str:
        match = re.search(r"\[(.*)\]$", self.nodeid)
        return match.group(1) if match else self.nodeid


@dataclass
class SuiteRun:
    """One run of the pytest-benchmark suite."""

    returncode: int
    data: dict
    outcomes: list[Outcome]
    duration_s: float
    output: str
    command: list[str]

    @property
    def benchmarks(self) -> dict[tuple, CaseResult]:
        return load_benchmarks(self.data)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome in ("failed", "error")]

    @property
    def skipped(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome == "skipped"]


# --------------------------------------------------------------------------- running the suite


def project_root(root: str | Path | None = None) -> Path:
    """The source tree holding ``tests/benchmarks`` (the suite is not installed with the package)."""
    candidates = [Path(root)] if root is not None else [Path.cwd(), Path(__file__).resolve().parents[1]]
    for candidate in candidates:
        if (candidate / SUITE_FILE).is_file():
            return candidate.resolve()
    raise ValueError(
        f"cannot find the benchmark suite {SUITE_FILE} under {', '.join(map(str, candidates))}; "
        "run from a poolbench source checkout (the suite is not part of the installed package)"
    )


def suite_arguments(config: BenchConfig, poolers=None, tiers=None) -> list[str]:
    """The suite's own pytest options for ``config`` (see tests/benchmarks/conftest.py)."""
    args = ["--device", config.device, "--dtype", config.dtype,
            f"--bench-batch={config.batch}", f"--bench-resolution={config.resolution}",
            f"--bench-threads={config.threads}", f"--bench-budget={config.budget_s}",
            f"--bench-min-rounds={config.min_rounds}", f"--bench-max-rounds={config.max_rounds}",
            f"--bench-crop={config.crop}", f"--bench-seed={config.seed}", f"--bench-clock={config.clock}",
            f"--benchmark-timer={config.timer_name}"]
    if _split(poolers):
        args.append(f"--bench-poolers={','.join(_split(poolers))}")
    if _split(tiers):
        args.append(f"--bench-tiers={','.join(_split(tiers))}")
    return args


def run_suite(config: BenchConfig, *, poolers=None, tiers=None, select: Sequence[str] | None = None,
              root: str | Path | None = None, plugins: Sequence[str] = (), env: dict | None = None,
              storage: Path | None = None, compare_with: str | None = None, compare_fail: Sequence[str] = (),
              extra_args: Sequence[str] = (), echo: bool = True) -> SuiteRun:
    """Run ``tests/benchmarks`` in a fresh interpreter and collect its JSON and outcomes.

    ``select`` restricts the run to those test node ids (the confirmation
    rerun); ``plugins`` are modules imported first (``pytest -p``: a pooler
    living outside the tree, a test double); ``compare_with`` and
    ``compare_fail`` are handed to pytest-benchmark's ``--benchmark-compare``
    and ``--benchmark-compare-fail`` (absolute times, same machine only).
    """
    root = project_root(root)
    with tempfile.TemporaryDirectory(prefix="poolbench-gate-") as tmp:
        json_path, outcomes_path = Path(tmp) / "bench.json", Path(tmp) / "outcomes.jsonl"
        command = [sys.executable, "-m", "pytest", *(select or [str(SUITE_DIR)]), "-m", "bench",
                   "--benchmark-enable", f"--benchmark-json={json_path}", "--benchmark-columns=median,iqr,rounds",
                   "--benchmark-sort=name", f"--bench-outcomes={outcomes_path}", "-p", "no:cacheprovider",
                   "-q", "-rfEs", *suite_arguments(config, poolers, tiers)]
        for plugin in plugins:
            command += ["-p", plugin]
        if compare_with and storage is not None:
            command += [f"--benchmark-storage={storage}", f"--benchmark-compare={compare_with}"]
            command += [f"--benchmark-compare-fail={expr}" for expr in compare_fail]
        command += list(extra_args)
        process_env = {**SUITE_ENV, **os.environ, **(env or {})}
        # The suite imports poolbench and impls from this tree even when poolbench is not installed.
        process_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), process_env.get("PYTHONPATH", "")) if p)
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=root, env=process_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        lines = []
        for line in process.stdout:
            lines.append(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        returncode = process.wait()
        duration = time.perf_counter() - start
        # pytest-benchmark opens the JSON file while parsing options: a usage error leaves it empty.
        text = json_path.read_text() if json_path.exists() else ""
        data = json.loads(text) if text.strip() else {"benchmarks": []}
        outcomes = []
        if outcomes_path.exists():
            for line in outcomes_path.read_text().splitlines():
                record = json.loads(line)
                outcomes.append(Outcome(record["nodeid"], record["outcome"], record.get("message", "")))
    return SuiteRun(returncode, data, outcomes, duration, "".join(lines), command)


# --------------------------------------------------------------------------- baselines


def _machine_id() -> str:
    from pytest_benchmark.utils import get_machine_id

    return get_machine_id()


def find_baseline(directory: str | Path, name: str) -> Path | None:
    """The newest ``NNNN_<name>.json`` under ``directory/<machine id>/``; this machine's folder first.

    Ratios travel between machines, so a baseline saved under another machine
    id is used when this machine has none.
    """
    directory = Path(directory)
    pattern = re.compile(rf"^(\d+)_{re.escape(name)}\.json$")
    found = []
    for path in directory.glob("*/*.json"):
        match = pattern.match(path.name)
        if match:
            found.append((path.parent.name == _machine_id(), int(match.group(1)), path))
    return max(found)[2] if found else None


def save_baseline(data: dict, directory: str | Path, name: str, *, previous: dict | None = None,
                  keep: Callable[[dict], bool] | None = None) -> Path:
    """Write ``data`` as pytest-benchmark storage ``directory/<machine id>/NNNN_<name>.json``.

    ``previous``'s benchmarks for which ``keep(bench)`` is true and that
    ``data`` does not measure again are carried over (a partial refresh with
    ``--poolers``/``--tiers`` keeps the other poolers' ratios).  Older files of
    the same name in that folder are removed: git keeps the history.
    """
    folder = Path(directory) / _machine_id()
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads(json.dumps(data))
    for bench in data.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)  # raw rounds: as --benchmark-save stores them, without
    if previous is not None and keep is not None:
        measured = {b.get("fullname") for b in data["benchmarks"]}
        carried = [b for b in previous.get("benchmarks", []) if b.get("fullname") not in measured and keep(b)]
        data["benchmarks"] = sorted(data["benchmarks"] + carried, key=lambda b: b.get("fullname", ""))
    numbers = [int(m.group(1)) for p in folder.glob("*.json") if (m := re.match(r"^(\d+)_", p.name))]
    path = folder / f"{max(numbers, default=0) + 1:04d}_{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    for old in folder.glob(f"*_{name}.json"):
        if old != path and re.match(rf"^\d+_{re.escape(name)}\.json$", old.name):
            old.unlink()
    return path


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


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Row:
    """One case (pooler × tier × layer × pass) in a comparison."""

    key: tuple
    label: str
    status: str  # regressed (fails) | slower | faster | unchanged | new | missing
    baseline_ratio: float | None = None
    current_ratio: float | None = None
    note: str = ""

    @property
    def change(self) -> float | None:
        if self.baseline_ratio and self.current_ratio is not None:
            return self.current_ratio / self.baseline_ratio - 1
        return None


@dataclass(frozen=True)
class GroupRow:
    """A pooler's time ratio change for one tier and pass: the geometric mean over its layers."""

    pooler: str
    tier: str
    pass_: str
    change: float
    rows: tuple[Row, ...]
    status: str  # regressed (fails) | faster | unchanged

    @property
    def label(self) -> str:
        return f"{self.pooler}[{self.tier}] {self.pass_}"

    @property
    def worst(self) -> Row:
        return max(self.rows, key=lambda row: row.change)


@dataclass
class Comparison:
    """Current ratios against the baseline's, per case and per pooler × tier × pass."""

    threshold: float
    case_threshold: float
    rows: list[Row]
    groups: list[GroupRow]

    def by_status(self, status: str) -> list[Row]:
        return [row for row in self.rows if row.status == status]

    @property
    def regressed_groups(self) -> list[GroupRow]:
        return [group for group in self.groups if group.status == "regressed"]

    @property
    def regressions(self) -> list[str]:
        """One message per failing pooler × tier × pass and per failing single case."""
        messages = [group_regression_message(g, self.threshold) for g in self.regressed_groups]
        return messages + [regression_message(r, self.case_threshold) for r in self.by_status("regressed")]

    @property
    def suspects(self) -> list[tuple]:
        """Case keys worth re-measuring: every layer of a regressed group, every regressed case."""
        keys = {row.key for group in self.regressed_groups for row in group.rows}
        return sorted(keys | {row.key for row in self.by_status("regressed")}, key=_sort_key)


def compare(baseline: dict[tuple, CaseResult], current: dict[tuple, CaseResult], threshold: float = DEFAULT_THRESHOLD,
            *, case_threshold: float | None = None, selected: Callable[[tuple], bool] | None = None) -> Comparison:
    """Compare ratios; the gate fails on ``Comparison.regressions``.

    Two levels, because a single layer's ratio is noisier than a pooler's:

    * a pooler's ratio for one tier and pass — the geometric mean of its
      per-layer ratio changes — up by more than ``threshold`` (default 10%);
    * any single layer's ratio up by more than ``case_threshold`` (default
      3 × ``threshold``), so a slowdown confined to one shape is not averaged away.

    ``selected(key)`` limits the baseline's cases that are expected in
    ``current`` (``--poolers``/``--tiers``); baseline cases outside it are ignored.
    """
    for name, value in (("threshold", threshold), ("case_threshold", case_threshold)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"{name} must be a positive fraction (0.10 = 10%), got {value!r}")
    case_threshold = 3 * threshold if case_threshold is None else case_threshold
    rows = []
    for key in sorted(set(baseline) | set(current), key=_sort_key):
        base, cur = baseline.get(key), current.get(key)
        if cur is None:
            if base.ratio is not None and (selected is None or selected(key)):
                rows.append(Row(key, base.label, "missing", base.ratio, None, "not measured in this run"))
            continue
        if cur.ratio is None:
            continue  # the comparator's own benchmarks carry no ratio
        if base is None or base.ratio is None:
            rows.append(Row(key, cur.label, "new", None, cur.ratio, "no baseline"))
            continue
        if tuple(base.shape) != tuple(cur.shape):
            raise ValueError(f"{cur.label}: the baseline measured shape {_fmt_shape(base.shape)}; run at the "
                             "baseline's batch/resolution or refresh the baseline")
        change = cur.ratio / base.ratio - 1
        status = ("regressed" if change > case_threshold else "slower" if change > threshold
                  else "faster" if change < -threshold else "unchanged")
        rows.append(Row(key, cur.label, status, base.ratio, cur.ratio))
    grouped: dict[tuple, list[Row]] = {}
    for row in rows:
        if row.change is not None:
            grouped.setdefault((row.key[0], row.key[1], row.key[3]), []).append(row)
    groups = []
    for (pooler, tier, pass_), members in grouped.items():
        change = math.exp(statistics.fmean(math.log1p(row.change) for row in members)) - 1
        status = "regressed" if change > threshold else "faster" if change < -threshold else "unchanged"
        groups.append(GroupRow(pooler, tier, pass_, change, tuple(members), status))
    return Comparison(threshold, case_threshold, rows, groups)


def _sort_key(key: tuple) -> tuple:
    pooler, tier, layer, pass_ = key
    tier_order = registry.TIERS.index(tier) if tier in registry.TIERS else len(registry.TIERS)
    return (pooler, tier_order, tier, PASSES.index(pass_) if pass_ in PASSES else 9, layer)


def regression_message(row: Row, case_threshold: float) -> str:
    """The line a failing gate prints for one case slower than the single-layer threshold."""
    return (f"REGRESSION {row.label}: time ratio to {COMPARATOR} {row.baseline_ratio:.3f}x -> "
            f"{row.current_ratio:.3f}x ({row.change:+.1%}; single-layer threshold +{case_threshold:.0%})")


def group_regression_message(group: GroupRow, threshold: float) -> str:
    """The line a failing gate prints for a pooler × tier × pass whose ratio grew."""
    layers = ", ".join(f"layer{r.key[2]} {r.baseline_ratio:.3f}x -> {r.current_ratio:.3f}x ({r.change:+.1%})"
                       for r in group.rows)
    return (f"REGRESSION {group.label}: time ratio to {COMPARATOR} up {group.change:+.1%} "
            f"(geometric mean over {len(group.rows)} layers; threshold +{threshold:.0%}): {layers}")


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


# --------------------------------------------------------------------------- the gate


@dataclass
class GateOptions:
    """Everything ``poolbench compare`` controls; see :func:`run_gate`."""

    config: BenchConfig = field(default_factory=BenchConfig)
    threshold: float = DEFAULT_THRESHOLD
    case_threshold: float | None = None
    poolers: Sequence[str] | None = None
    tiers: Sequence[str] | None = None
    save_baseline: bool = False
    baseline_dir: Path = DEFAULT_BASELINE_DIR
    baseline_name: str | None = None
    report: Path | None = DEFAULT_REPORT
    confirm: int = 2
    repeat: int = 1
    compare_fail: Sequence[str] = ()
    plugins: Sequence[str] = ()
    env: dict | None = None
    root: Path | None = None
    echo: bool = True

    @property
    def name(self) -> str:
        return self.baseline_name or baseline_name(self.config)


@dataclass
class GateResult:
    """What the gate decided, and why."""

    passed: bool
    messages: list[str]
    comparison: Comparison | None
    runs: list[SuiteRun]
    baseline_path: Path | None
    saved_path: Path | None
    report_path: Path | None
    markdown: str
    duration_s: float


def _selected(options: GateOptions) -> Callable[[tuple], bool]:
    poolers, tiers = _split(options.poolers), _split(options.tiers)
    return lambda key: (not poolers or key[0] in poolers) and (not tiers or key[1] in tiers)


def run_gate(options: GateOptions) -> GateResult:
    """Run the suite, compare its ratios with the stored baseline, write the report.

    The gate fails when a test fails (an equivalence mismatch, a crash, a
    plugin that does not load), when pytest-benchmark's own
    ``--benchmark-compare-fail`` fails, or on a ratio regression (see
    :func:`compare`).  Suspect cases are then re-measured in up to
    ``confirm`` fresh processes (default 2) with twice the time budget, and
    the smallest ratio seen is kept: a regression must show in every run.  A
    real slowdown repeats; the interference of a shared machine (another
    process on the caches or on the core's sibling, an unlucky memory layout)
    mostly does not.  With ``save_baseline`` the
    run becomes the new baseline instead (refused if any test failed).
    """
    start = time.perf_counter()
    root = project_root(options.root)
    baseline_dir = Path(options.baseline_dir)
    baseline_dir = baseline_dir if baseline_dir.is_absolute() else root / baseline_dir
    baseline_path = find_baseline(baseline_dir, options.name)
    baseline_data = json.loads(baseline_path.read_text()) if baseline_path else None
    baseline = load_benchmarks(baseline_data) if baseline_data else {}
    config = options.config
    messages: list[str] = []
    if not options.plugins:  # reject unknown names before minutes of running (plugins load in the suite)
        bench_cases(config, options.poolers, options.tiers)
    if not options.save_baseline:
        if baseline_path is None:
            raise ValueError(f"no baseline named {options.name!r} under {baseline_dir}; create one with "
                             "`poolbench compare --save-baseline` (and the same options)")
        mismatch = config_mismatch(baseline, config)
        if mismatch:
            raise ValueError(f"cannot compare with {baseline_path}: {mismatch}; pass the same options or refresh "
                             "the baseline with --save-baseline")

    compare_with = None
    if baseline_path is not None and baseline_path.parent.name == _machine_id() and not options.save_baseline:
        compare_with = baseline_path.stem.split("_", 1)[0]
    if options.compare_fail and not compare_with and not options.save_baseline:
        messages.append(f"note: --compare-fail not applied: the baseline is not from machine id {_machine_id()} "
                        "(absolute times only compare on the machine that recorded them)")
    suite = dict(poolers=options.poolers, tiers=options.tiers, root=root, plugins=options.plugins, env=options.env,
                 echo=options.echo)
    run = run_suite(config, storage=baseline_dir, compare_with=compare_with,
                    compare_fail=options.compare_fail if compare_with else (), **suite)
    runs = [run]
    if options.save_baseline:  # --repeat: the baseline is the per-case median over that many runs
        runs += [run_suite(config, **suite) for _ in range(max(1, options.repeat) - 1)]
        run = replace(run, data=merge_runs([r.data for r in runs]),
                      outcomes=[o for r in runs for o in r.outcomes],
                      returncode=max(runs, key=lambda r: r.returncode != 0).returncode)
    failed = False
    for failure in run.failures:
        messages.append(f"FAILED {failure.case_id}: {failure.message}")
        failed = True
    if run.returncode not in (0, 5) and not failed:
        lines = [line.strip() for line in run.output.splitlines()]
        absolute = [line for line in lines if "has failed" in line and "RegressionCheck" in line]
        if absolute:  # pytest-benchmark's --benchmark-compare-fail
            messages += [f"FAILED --benchmark-compare-fail (absolute time vs the baseline): {line}" for line in absolute]
        else:
            tail = [line for line in lines if "error" in line.lower() or "failed" in line.lower()]
            messages.append(f"FAILED pytest exited with status {run.returncode}" + (": " + " | ".join(tail[-5:]) if tail else ""))
        failed = True
    current = run.benchmarks
    if not any(result.ratio is not None for result in current.values()) and not failed:
        messages.append("FAILED the suite measured nothing (no pooler selected, or every case was skipped)")
        failed = True

    comparison, saved_path = None, None
    if options.save_baseline:
        if failed:
            messages.append("baseline NOT saved: the run had failures")
        else:
            partial = bool(_split(options.poolers) or _split(options.tiers)) and baseline_data is not None
            selected = _selected(options)

            def keep(bench: dict) -> bool:  # a partial refresh keeps the poolers it did not measure
                info = bench.get("extra_info") or {}
                if info.get("pooler") in (None, COMPARATOR):
                    return False
                return not selected((info.get("pooler"), info.get("tier"), info.get("layer"), info.get("pass")))

            saved_path = save_baseline(run.data, baseline_dir, options.name,
                                       previous=baseline_data if partial else None, keep=keep if partial else None)
            messages.append(f"baseline saved: {_rel(saved_path, root)}")
        if baseline and not config_mismatch(baseline, config):
            comparison = compare(baseline, current, options.threshold, case_threshold=options.case_threshold,
                                 selected=_selected(options))
    else:
        comparison = compare(baseline, current, options.threshold, case_threshold=options.case_threshold,
                             selected=_selected(options))
        merged = dict(current)
        for attempt in range(1, options.confirm + 1):
            suspects = comparison.suspects
            if not suspects:
                break
            # A fresh process, twice the time per case: interference (another process on the
            # core's caches, an unlucky memory layout) rarely repeats, a real slowdown does.
            nodeids = sorted({merged[key].fullname for key in suspects if key in merged})
            rerun = run_suite(replace(config, budget_s=2 * config.budget_s), select=nodeids, **suite)
            runs.append(rerun)
            for failure in rerun.failures:
                messages.append(f"FAILED (confirmation run {attempt}) {failure.case_id}: {failure.message}")
                failed = True
            for key, result in rerun.benchmarks.items():
                if key in merged and result.ratio is not None and merged[key].ratio is not None:
                    merged[key] = min(merged[key], result, key=lambda r: r.ratio)  # best of the runs
            before = len(comparison.regressions)
            comparison = compare(baseline, merged, options.threshold, case_threshold=options.case_threshold,
                                 selected=_selected(options))
            messages.append(f"confirmation run {attempt}: re-measured {len(nodeids)} suspect case(s); "
                            f"{before} regression(s) before, {len(comparison.regressions)} after (best of the runs)")
        messages += comparison.regressions

    passed = not failed and (options.save_baseline or not comparison.regressions)
    duration = time.perf_counter() - start
    markdown = render_markdown(comparison, passed=passed, messages=messages, runs=runs, config=config,
                               baseline_path=baseline_path, saved_path=saved_path, root=root, duration_s=duration)
    report_path = None
    if options.report is not None:
        report_path = Path(options.report)
        report_path = report_path if report_path.is_absolute() else root / report_path
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(markdown)
        # The run's own pytest-benchmark JSON beside the report (a CI artifact; `pytest-benchmark compare` reads it).
        report_path.with_suffix(".json").write_text(json.dumps(run.data, indent=1) + "\n")
    return GateResult(passed, messages, comparison, runs, baseline_path, saved_path, report_path, markdown, duration)


# --------------------------------------------------------------------------- report


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}×"


def _rel(path: Path | None, root: Path | None) -> str:
    if path is None:
        return "–"
    try:
        return str(path.relative_to(root)) if root else str(path)
    except ValueError:
        return str(path)


def render_markdown(comparison: Comparison | None, *, passed: bool, messages: Sequence[str] = (),
                    runs: Sequence[SuiteRun] = (), config: BenchConfig | None = None,
                    baseline_path: Path | None = None, saved_path: Path | None = None, root: Path | None = None,
                    duration_s: float | None = None) -> str:
    """The markdown summary: verdict, failures, what got faster/slower and by how much."""
    lines = [f"# Benchmark gate: {'PASS' if passed else 'FAIL'}", ""]
    lines.append(f"- {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}")
    if comparison is not None:
        lines.append(f"- fails when a pooler's time ratio to `{COMPARATOR}` (geometric mean over the layers, per tier "
                     f"and pass) grows by more than {comparison.threshold:.0%}, or one layer's by more than "
                     f"{comparison.case_threshold:.0%}")
    if config is not None:
        lines.append(f"- measured on {config.device}, {config.dtype}, VGG-16 pooling shapes at batch {config.batch} "
                     f"and {config.resolution}², {config.threads} thread(s), {config.clock} clock, "
                     f"~{config.budget_s:g} s per case")
    lines.append(f"- baseline: `{_rel(baseline_path, root)}`" + (f"; saved: `{_rel(saved_path, root)}`" if saved_path else ""))
    if runs:
        lines.append(f"- suite runs: {', '.join(f'{r.duration_s:.0f} s' for r in runs)}"
                     + (f"; gate total {duration_s:.0f} s" if duration_s is not None else ""))
        reasons: dict[str, int] = {}
        for outcome in runs[0].skipped:
            reasons[outcome.message] = reasons.get(outcome.message, 0) + 1
        if reasons:
            lines.append("- skipped: " + "; ".join(f"{n} × {reason}" for reason, n in sorted(reasons.items())))
    lines.append("")
    if messages:
        lines += ["## Messages", "", *(f"- {m}" for m in messages), ""]
    if comparison is None:
        return "\n".join(lines)
    counts = {status: len(comparison.by_status(status))
              for status in ("regressed", "slower", "faster", "unchanged", "new", "missing")}
    lines += ["## Summary", "", "Cases: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n) + ".", ""]
    if comparison.groups:
        changes = [g.change for g in comparison.groups]
        lines += [f"Pooler ratio changes (per tier and pass): median {_pct(statistics.median(changes))}, "
                  f"range {_pct(min(changes))} to {_pct(max(changes))}.", "",
                  "| pooler | tier | pass | layers | change (geo. mean) | worst layer | status |",
                  "|---|---|---|---|---|---|---|"]
        for g in sorted(comparison.groups, key=lambda g: -g.change):
            worst = g.worst
            lines.append(f"| {g.pooler} | {g.tier} | {g.pass_} | {len(g.rows)} | {_pct(g.change)} | "
                         f"layer{worst.key[2]} {_pct(worst.change)} | {g.status} |")
        lines.append("")
    sections = (("regressed", f"Regressed layers (ratio up by more than {comparison.case_threshold:.0%})"),
                ("slower", f"Slower layers (ratio up by {comparison.threshold:.0%}–{comparison.case_threshold:.0%}, "
                           "not failing on their own)"),
                ("faster", f"Faster layers (ratio down by more than {comparison.threshold:.0%})"))
    for status, title in sections:
        rows = sorted(comparison.by_status(status), key=lambda r: -abs(r.change or 0))
        if rows:
            lines += [f"## {title}", "", "| case | baseline ratio | current ratio | change |", "|---|---|---|---|"]
            lines += [f"| {r.label} | {_ratio(r.baseline_ratio)} | {_ratio(r.current_ratio)} | {_pct(r.change)} |"
                      for r in rows]
            lines.append("")
    for status, title in (("new", "New (no baseline yet)"), ("missing", "In the baseline but not measured")):
        rows = comparison.by_status(status)
        if rows:
            lines += [f"## {title}", "", *(f"- {r.label}: {r.note}" for r in rows), ""]
    lines += ["## All cases", "", "| case | baseline ratio | current ratio | change | status |", "|---|---|---|---|---|"]
    lines += [f"| {r.label} | {_ratio(r.baseline_ratio)} | {_ratio(r.current_ratio)} | {_pct(r.change)} | {r.status} |"
              for r in comparison.rows]
    lines.append("")
    return "\n".join(lines)
