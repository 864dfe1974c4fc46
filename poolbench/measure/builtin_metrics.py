"""The metrics poolbench ships: latency, memory, parameters and MACs (each registered with ``@metric``)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .. import flops, models, registry
from ..metrics import CPU_MEMORY_METHOD, Column, Quantity, metric
from .metric_subject import Subject
from .timing import ROUND_STATISTIC, combine_rounds, host_bound, peak_memory_bytes, saved_tensor_bytes, time_rounds

__all__ = ["activation_bytes", "baseline_params"]


def _latency(name: str, pass_: str, subject: Subject) -> list[Quantity]:
    """``name`` (eager timing) and, with ``timing="graph"``, ``name_graph`` (CUDA-graph replays), by the one policy."""
    settings = subject.settings
    step = subject.passes.step(pass_)
    timings = ("eager", "graph") if settings.timing == "graph" else ("eager",)
    quantities = []
    for timing in timings:
        times, errors = time_rounds({name: step}, subject.device, rounds=settings.rounds, warmup=settings.warmup,
                                    min_run_time=settings.min_run_time, timing=timing)
        if errors:
            raise RuntimeError(f"{timing} timing failed: {errors[name]}")
        medians = times[name]
        detail = {"method": f"{timing} timing, {ROUND_STATISTIC} of {len(medians)} round medians",
                  "round_medians_ms": medians, "timing": timing}
        quantities.append(Quantity(name if timing == "eager" else f"{name}_graph", combine_rounds(medians), "ms",
                                   detail))
    if len(quantities) == 2:
        flagged = host_bound(quantities[0].value, quantities[1].value)
        quantities[0].detail["host_bound"] = quantities[1].detail["host_bound"] = flagged
    return quantities


@metric("latency_forward", description="inference latency (eval mode, no autograd)",
        columns=(Column("forward ×", ("latency_forward",), "ratio"),
                 Column("forward graph ×", ("latency_forward_graph",), "ratio")))
def latency_forward(subject: Subject) -> list[Quantity]:
    """Inference latency: eval mode, no autograd; median over the runs."""
    return _latency("latency_forward", "forward", subject)


@metric("latency_train", description="forward+backward latency (train mode)",
        columns=(Column("train ×", ("latency_train",), "ratio"),
                 Column("train graph ×", ("latency_train_graph",), "ratio")))
def latency_train(subject: Subject) -> list[Quantity]:
    """Training-step latency: train-mode forward and backward (no optimizer step)."""
    return _latency("latency_train", "forward_backward", subject)


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

