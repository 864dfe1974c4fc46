"""Latency and memory measurement, the way the well-kept tools do it.

* GPU latency, ``timing="eager"``: CUDA events around each call, warm-up
  first, the L2 cache flushed before every timed call (as
  ``triton.testing.do_bench``), no ``synchronize`` inside the timed region;
  median and quantiles reported.  This is what a user's Python loop sees:
  kernels *and* the host path that launches them.
* GPU latency, ``timing="graph"``: the call is captured once in a CUDA graph
  (after warm-up on a side stream, so one-off work such as autotuning and
  allocator growth is not captured) and the graph's replays are timed the same
  way, as ``triton.testing.do_bench_cudagraph`` does.  A replay launches the
  recorded kernels without any Python or dispatcher work, so it is the device
  time alone; eager well above graph means the call is host-bound.
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

__all__ = ["HOST_BOUND_RATIO", "TIMINGS", "Latency", "capture_graph", "check_timing", "host_bound",
           "measure_latency", "peak_memory_bytes", "saved_tensor_bytes", "synchronize"]

#: ``--timing`` choices: "eager" (each call launched from Python, CUDA events / torch.utils.benchmark) and
#: "graph" (the call captured in a CUDA graph after warm-up, replays timed; CUDA only).
TIMINGS = ("eager", "graph")

#: A call is flagged host-bound when its eager time is at least this many times its graph-replay time: the
#: launches, not the kernels, set its speed (Python, dispatcher and launch latency exceed the device work).
HOST_BOUND_RATIO = 1.5


def check_timing(timing: str, device: torch.device | str) -> None:
    """Refuse an unknown timing mode, and ``graph`` off CUDA (there are no CUDA graphs on the CPU)."""
    if timing not in TIMINGS:
        raise ValueError(f"timing must be one of {', '.join(TIMINGS)}, got {timing!r}")
    if timing == "graph" and torch.device(device).type != "cuda":
        raise ValueError(f"--timing graph needs a CUDA device (it times CUDA-graph replays); this run is on "
                         f"{torch.device(device).type}: use --timing eager")


def host_bound(eager_ms: float, graph_ms: float) -> bool:
    """Whether eager timing is well above graph replay (:data:`HOST_BOUND_RATIO`); False when either is unknown."""
    return bool(eager_ms == eager_ms and graph_ms == graph_ms and graph_ms > 0
                and eager_ms >= HOST_BOUND_RATIO * graph_ms)


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
                    min_run_time: float = 0.2, max_runs: int = 200, timing: str = "eager") -> Latency:
    """Time ``fn()``: CUDA events on GPU, ``torch.utils.benchmark`` on CPU.

    ``timing="graph"`` (CUDA only) times replays of ``fn`` captured in a CUDA
    graph; ``fn`` must then not synchronize (a capture cannot) — pass the raw
    step, e.g. :meth:`poolbench.measure.PassSubject.step`.
    """
    device = torch.device(device)
    check_timing(timing, device)
    if timing == "graph":
        replay = capture_graph(fn, device, warmup=max(warmup, 1))
        latency = _cuda_latency(replay, device, min_run_time, max_runs)
        return Latency(latency.median_ms, latency.q20_ms, latency.q80_ms, latency.runs,
                       "cuda graph replays, cuda events (L2 flushed)")
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


def capture_graph(step: Callable[[], object], device: torch.device | str, *, warmup: int = 3,
                  cuda=None) -> Callable[[], None]:
    """Capture ``step()`` in a CUDA graph and return a zero-argument replay (``cuda``: stand-in for tests).

    As ``triton.testing.do_bench_cudagraph`` does: ``warmup`` calls run first
    on a side stream (the capture's stream rules; one-off work — Triton
    autotuning, cuDNN's algorithm search, allocator growth, a first-call
    validation — happens there, not in the graph), then one call is captured.
    The inputs are the closure's own tensors, which stay alive (and at fixed
    addresses) as long as the closure: the static inputs a replay reads.
    The captured outputs live in the graph's private pool and are overwritten
    by each replay; ``step``'s return value is kept with the graph so that
    memory is never handed to another tensor while replays write it.

    A training step captures forward and backward.  :class:`PassSubject`'s
    step returns the gradients (``torch.autograd.grad``) rather than
    accumulating into ``.grad``, so nothing must be zeroed between replays;
    a step that does accumulate into ``.grad`` should set the grads to
    ``None`` before capture (``module.zero_grad(set_to_none=True)``), so the
    backward allocates them from the graph's pool.
    """
    cuda = cuda or torch.cuda
    device = torch.device(device)
    side = cuda.Stream(device=device)
    side.wait_stream(cuda.current_stream(device))
    with cuda.stream(side):
        for _ in range(warmup):
            step()
    cuda.current_stream(device).wait_stream(side)
    cuda.synchronize(device)
    graph = cuda.CUDAGraph()
    with cuda.graph(graph):
        outputs = step()
    cuda.synchronize(device)

    def replay() -> None:
        graph.replay()

    replay.graph, replay.outputs = graph, outputs  # kept alive with the replay (the pool, the static outputs)
    return replay


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


# ----------------------------------------------------------------------------------------------
# the timing policy: interleaved rounds, one statistic, one ratio
# ----------------------------------------------------------------------------------------------

#: How a subject's rounds become its time: the lowest round median.  On a shared machine another
#: process's burst inflates a round, never deflates it, so the best median is the robust estimate of
#: the undisturbed one.  Ratios do not use it: they are :func:`poolbench.measure.paired_ratio` over the
#: rounds (each round's ratio to the comparator timed seconds apart, then the median).
ROUND_STATISTIC = "min"
STATISTICS = {"min": min, "median": statistics.median}


def combine_rounds(medians_ms, statistic: str = ROUND_STATISTIC) -> float:
    """One time from a subject's round medians (``statistic``: "min", the policy, or "median")."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    values = [value for value in medians_ms if value == value]
    return STATISTICS[statistic](values) if values else float("nan")


def time_rounds(steps, device: torch.device | str, *, rounds: int = 3, warmup: int = 3, min_run_time: float = 0.2,
                timing: str = "eager", on_call=None) -> tuple[dict, dict]:
    """Time every step of ``steps`` (``{key: zero-argument step}``) in ``rounds`` interleaved rounds.

    The one timing policy of ``poolbench run``, ``poolbench layerbench`` and
    the time gate: each round times every subject once (:func:`measure_latency`),
    so load that drifts during the run hits all of them alike; a subject's time
    is :func:`combine_rounds` of its round medians, and a ratio between two
    subjects is :func:`poolbench.measure.paired_ratio` of their round medians.
    With ``timing="graph"`` every step is captured once (first round, after
    ``warmup``) and its replays are timed in every round.

    A step that raises is dropped from later rounds.  ``on_call(key, round)``
    is called before each measurement (progress lines).  Returns
    ``({key: [median_ms per round]}, {key: "Type: message"})``.
    """
    device = torch.device(device)
    check_timing(timing, device)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    times: dict = {key: [] for key in steps}
    errors: dict = {}
    prepared: dict = {}
    for round_index in range(rounds):
        for key, step in steps.items():
            if key in errors:
                continue
            if on_call is not None:
                on_call(key, round_index)
            try:
                if timing == "graph":
                    if key not in prepared:
                        prepared[key] = capture_graph(step, device, warmup=max(warmup, 1))
                    times[key].append(_cuda_latency(prepared[key], device, min_run_time, 200).median_ms)
                else:
                    times[key].append(measure_latency(step, device, warmup=warmup if round_index == 0 else 0,
                                                      min_run_time=min_run_time).median_ms)
            except Exception as exc:  # noqa: BLE001 -- a failing subject keeps its error; the others go on
                text = str(exc).strip().splitlines()
                errors[key] = f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
    prepared.clear()
    return times, errors
