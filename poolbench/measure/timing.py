"""Latency and memory measurement, the way the well-kept tools do it.

* GPU latency: CUDA events around each call, warm-up first, the L2 cache
  flushed before every timed call (as ``triton.testing.do_bench``), no
  ``synchronize`` inside the timed region; median and quantiles reported.
* CPU latency: ``torch.utils.benchmark.Timer.blocked_autorange`` (it picks the
  number of runs per measurement and reports the median).
* Memory: on CUDA the extra ``max_memory_allocated`` over the call; on every
  device the bytes autograd saves for backward (``saved_tensors_hooks``),
  which is what a pooler adds to training memory and is exact on CPU too.

Every measured callable is a zero-argument closure: set-up stays outside.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from ..toolchain import cpp_extension

__all__ = ["Latency", "measure_latency", "peak_memory_bytes", "saved_tensor_bytes", "synchronize"]


@dataclass(frozen=True)
class Latency:
    """Latency of one call in milliseconds: median and the 20%/80% quantiles over ``runs``."""

    median_ms: float
    q20_ms: float
    q80_ms: float
    runs: int
    method: str


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(fn: Callable[[], object], device: torch.device | str = "cpu", *, warmup: int = 3,
                    min_run_time: float = 0.2, max_runs: int = 200) -> Latency:
    """Time ``fn()``: CUDA events on GPU, ``torch.utils.benchmark`` on CPU."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        return _cuda_latency(fn, device, min_run_time, max_runs)
    measurement = _torch_benchmark().Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()
                                        ).blocked_autorange(min_run_time=min_run_time)
    times = sorted(t * 1e3 for t in measurement.times)
    return Latency(measurement.median * 1e3, _quantile(times, 0.2), _quantile(times, 0.8),
                   len(times) * measurement.number_per_run, "torch.utils.benchmark.blocked_autorange")


def _torch_benchmark():
    """``torch.utils.benchmark``, imported on first use, after the toolchain is located.

    It imports ``torch.utils.cpp_extension``, whose CUDA_HOME guess must not be
    the first one made (see :mod:`poolbench.toolchain`).
    """
    cpp_extension()
    import torch.utils.benchmark as torch_benchmark

    return torch_benchmark


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[max(0, min(98, round(q * 100) - 1))]


def _cuda_latency(fn, device, min_run_time, max_runs) -> Latency:
    # Reading a buffer larger than L2 before each call measures cold-cache
    # behaviour, as triton.testing.do_bench does.  The flush only *reads* (a sum
    # into a scalar): writing it (zero_) would leave dirty lines that the timed
    # kernel pays to write back, inflating small layers' times.
    flush = torch.zeros(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device)
    flush_sink = torch.zeros((), dtype=torch.int64, device=device)
    torch.cuda.synchronize(device)
    probe_start, probe_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    probe_start.record()
    for _ in range(5):
        fn()
    probe_end.record()
    torch.cuda.synchronize(device)
    estimate_ms = max(probe_start.elapsed_time(probe_end) / 5, 1e-3)
    runs = int(max(10, min(max_runs, min_run_time * 1e3 / estimate_ms)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for start, end in zip(starts, ends):
        torch.sum(flush, 0, dtype=torch.int64, out=flush_sink)
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return Latency(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), runs, "cuda events (L2 flushed)")


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str) -> int | None:
    """Extra peak CUDA memory allocated while ``fn()`` runs; ``None`` off CUDA (no allocator stats)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of tensors autograd saves for backward while ``fn()`` runs (storages counted once).

    This is the activation memory a layer adds to a training step, and it is
    exact on any device.  The graph built inside is for measurement only: the
    saved tensors are released on return (a pack hook that returned the tensor
    itself would tie ops that save their own output, e.g. ReLU, into a
    reference cycle through C++ that the garbage collector cannot free, leaking
    every call's graph), so it cannot be back-propagated.

    Tensors sharing storage with ``exclude`` (e.g. a network's weights, which
    exist anyway) are not counted.
    """
    excluded = {tensor.untyped_storage().data_ptr() for tensor in exclude}
    stash: list[torch.Tensor] = []  # keeps every saved storage (and so its address) alive until counted
    sizes: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> int:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            sizes[storage.data_ptr()] = storage.nbytes()
        stash.append(tensor)
        return len(stash) - 1

    def unpack(index: int) -> torch.Tensor:
        raise RuntimeError("saved_tensor_bytes measures only; its graph cannot be back-propagated")

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            fn()
    finally:
        stash.clear()
    return sum(sizes.values())
