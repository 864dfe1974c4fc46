"""Run one step of ``scripts/gpu_check.sh`` on the CPU with the GPU work replaced by counting stand-ins.

    python3 scripts/gpu_plan.py --step NAME --out DIR -- -m poolbench layerbench --device cuda ...
    python3 scripts/gpu_plan.py --step NAME --out DIR -- -m pytest ... | -c CODE | SCRIPT.py ARGS

What a GPU step costs is dominated by what it compiles, so this counts exactly that, on the CPU,
by running the step's own command with:

* **Triton launches recorded, not run.**  ``Autotuner.run`` and ``JITFunction.run`` are replaced:
  a launch records the compile keys it would need — one per (kernel, config, constexprs, argument
  specialisation: dtypes, 16-byte pointer alignment, integers equal to 1 or divisible by 16, which
  is what Triton specialises on) — and returns without launching.  An autotuned kernel meeting a
  new autotune key compiles every config the prune keeps (and benchmarks each); with one config
  (``POOLBENCH_TRITON_AUTOTUNE=0``) it compiles one.  The kernel module is imported for the GPU
  (its GPU config lists) and then told it runs on CPU tensors.
* **torch.compile recorded, not compiled.**  ``torch.compile`` returns the eager function,
  recording one specialisation per distinct (function, argument shapes/dtypes, grad mode):
  what ``dynamic=False`` compiles.
* **The device mapped to the CPU.**  ``--device cuda`` becomes ``--device cpu``, ``--timing graph``
  becomes eager (recorded: a graph capture adds no compile), the batch becomes
  ``PLAN_BATCH`` (2; compile keys depend on the shape's per-plane sizes, and ``N·C`` stays a
  multiple of 16 for every VGG/ResNet pooling layer), and every latency measurement runs its
  call once (recorded with the seconds of timing it would spend on the GPU).
* GPU-only tests (``pytest -m gpu``) are not skipped: tests that need a real CUDA device fail at
  once, the Triton ones run against the stand-ins.

Compile keys are shared across steps through ``<out>/plan_compiles.json`` (Triton's and
inductor's on-disk caches make a key compiled by an earlier step a cache hit), and each step's
counts go to ``<out>/plan_steps.jsonl``, which ``gpu_check.sh`` turns into ``plan.tsv``.
The step's own exit status is reported but does not matter: the stand-ins compute nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time
from pathlib import Path

PLAN_BATCH = "2"
#: GPU seconds one whole-network measurement of ``poolbench run`` takes at least: 18 calls (3 warm-up,
#: 5 probe, 10 timed: ``measure.timing``'s floor) of a ~60 ms VGG-16 batch-32 float32 train step.
NETWORK_MEASURE_S = 1.1
#: PLAN_ASSUME_ONE_CONFIG=1: count an autotuned kernel as one config wherever POOLBENCH_TRITON_AUTOTUNE=0
#: is set, for kernels that do not read that variable yet (a projection; plan.md says when it was used).
ASSUME_ONE_CONFIG = (os.environ.get("PLAN_ASSUME_ONE_CONFIG") == "1"
                     and os.environ.get("POOLBENCH_TRITON_AUTOTUNE") == "0")
RECORDER = None  # this step's Recorder (the pytest plugin counts tests into it)


class Recorder:
    """Compile keys (shared across steps) and this step's counts."""

    def __init__(self, out: Path, step: str):
        self.out, self.step = out, step
        self.keys_file = out / "plan_compiles.json"
        seen = json.loads(self.keys_file.read_text()) if self.keys_file.exists() else {}
        self.seen_triton, self.seen_compile = set(seen.get("triton", [])), set(seen.get("compile", []))
        self.counts = {"assumed_one_config": ASSUME_ONE_CONFIG, "triton_compiles": 0, "autotune_benchmarks": 0, "triton_launches": 0,
                       "compile_specialisations": 0, "measurements": 0, "timed_s": 0.0, "graph_timing": False, "tests": 0}

    def triton(self, key: str) -> None:
        self.counts["triton_launches"] += 1
        if key not in self.seen_triton:
            self.seen_triton.add(key)
            self.counts["triton_compiles"] += 1

    def compiled(self, key: str) -> None:
        if key not in self.seen_compile:
            self.seen_compile.add(key)
            self.counts["compile_specialisations"] += 1

    def save(self, rc: int, seconds: float) -> None:
        self.keys_file.write_text(json.dumps({"triton": sorted(self.seen_triton),
                                              "compile": sorted(self.seen_compile)}))
        with (self.out / "plan_steps.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": self.step, "rc": rc, "cpu_seconds": round(seconds, 1),
                                     **self.counts}) + "\n")


def _arg_signature(value) -> str:
    """What Triton specialises a runtime argument on."""
    if hasattr(value, "data_ptr") and hasattr(value, "dtype"):
        return f"{value.dtype}{'/16' if value.data_ptr() % 16 == 0 else ''}"
    if isinstance(value, bool):
        return f"b{int(value)}"
    if isinstance(value, int):
        return "1" if value == 1 else "i16" if value % 16 == 0 else "i"
    if isinstance(value, float):
        return "f"
    return type(value).__name__


def _kernel_name(fn) -> str:
    while hasattr(fn, "fn") and not hasattr(fn, "__name__"):
        fn = fn.fn
    return getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", repr(fn))


def _launch_key(jit, args, kwargs, config=None) -> str:
    while not hasattr(jit, "params") and hasattr(jit, "fn"):  # heuristics/autotuner wrappers: the JITFunction
        jit = jit.fn
    names = list(getattr(jit, "arg_names", []))
    constexprs = {name for name, param in zip(names, getattr(jit, "params", [])) if getattr(param, "is_constexpr", False)}
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    parts = [f"{name}={value!r}" if name in constexprs else f"{name}:{_arg_signature(value)}"
             for name, value in bound.items()]
    if config is not None:
        parts += [f"{k}={v!r}" for k, v in sorted(config.all_kwargs().items())]
    else:
        parts += [f"{k}={v!r}" for k, v in sorted(kwargs.items()) if k not in names]
    return f"{_kernel_name(jit)}({', '.join(parts)})"


def install_triton_stand_ins(recorder: Recorder) -> None:
    try:
        from triton.runtime import autotuner, jit
    except ImportError:
        return

    def autotuned_run(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        configs = list(self.configs)
        if len(configs) > 1:
            named = {**self.nargs, **kwargs}
            key = tuple([named[k] for k in self.keys if k in named]
                        + [str(v.dtype) for v in named.values() if hasattr(v, "dtype")])
            cache = self.__dict__.setdefault("_plan_cache", {})
            if key not in cache:
                try:
                    pruned = list(self.prune_configs(kwargs))
                except TypeError:  # another Triton version's signature
                    pruned = list(self.prune_configs(kwargs, self.nargs))
                if ASSUME_ONE_CONFIG:
                    pruned = pruned[:1]
                recorder.counts["autotune_benchmarks"] += len(pruned) if len(pruned) > 1 else 0
                for config in pruned:
                    recorder.triton(_launch_key(self.fn, args, kwargs, config))
                cache[key] = pruned[0]
            configs = [cache[key]]
        recorder.triton(_launch_key(self.fn, args, kwargs, configs[0]))

    def jit_run(self, *args, grid=None, warmup=False, **kwargs):
        recorder.triton(_launch_key(self, args, kwargs))

    autotuner.Autotuner.run = autotuned_run
    jit.JITFunction.run = jit_run
    try:  # import the kernels for the GPU (their GPU configs), then let them take CPU tensors
        os.environ.pop("TRITON_INTERPRET", None)
        import poolbench.impls.dpp_triton_kernels as kernels
        kernels.INTERPRET = True
    except Exception as exc:  # noqa: BLE001 -- no Triton tier: nothing to count
        print(f"[gpu_plan] triton kernels not importable: {exc}", file=sys.stderr)


def install_compile_stand_in(recorder: Recorder) -> None:
    import torch

    def compile_stand_in(model=None, **options):
        if model is None:  # used as @torch.compile(...)
            return lambda fn: compile_stand_in(fn, **options)
        name = getattr(model, "__qualname__", type(model).__name__)

        def call(*args, **kwargs):
            spec = [f"{tuple(a.shape)}:{a.dtype}:{a.requires_grad}" if isinstance(a, torch.Tensor) else repr(a)
                    for a in (*args, *kwargs.values())]
            recorder.compiled(f"{name}({', '.join(spec)}) grad={torch.is_grad_enabled()}")
            return model(*args, **kwargs)

        return call

    torch.compile = compile_stand_in


def install_timing_stand_in(recorder: Recorder, networks: bool) -> None:
    """Every latency measurement runs its call once and records the GPU timing it stands for."""
    from poolbench.measure import timing

    def measure_once(fn, device="cpu", *, warmup=3, min_run_time=0.2, max_runs=200, timing_mode="eager", **_):
        fn()
        recorder.counts["measurements"] += 1
        # the timed window plus the probe calls; a whole network's call is long enough for the 10-run floor to rule
        recorder.counts["timed_s"] += max(min_run_time + 5 * 0.001, NETWORK_MEASURE_S if networks else 0.0)
        return timing.Latency(1.0, 1.0, 1.0, 1, "plan stand-in")

    timing.measure_latency = measure_once


def _rewrite(argv: list[str], recorder: Recorder) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--device" and i + 1 < len(argv) and argv[i + 1] == "cuda":
            out += [arg, "cpu"]
            i += 2
            continue
        if arg == "--timing" and i + 1 < len(argv) and argv[i + 1] == "graph":
            recorder.counts["graph_timing"] = True
            out += [arg, "eager"]
            i += 2
            continue
        if arg == "--batch" and i + 1 < len(argv):
            out += [arg, PLAN_BATCH]
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def _unskip_gpu_tests_plugin():
    """A pytest plugin object: runs ``-m gpu`` tests on the CPU instead of skipping them."""

    class UnskipGpu:
        def pytest_runtest_logreport(self, report):
            if report.when == "call":
                RECORDER.counts["tests"] = RECORDER.counts.get("tests", 0) + 1

        def pytest_collection_modifyitems(self, config, items):
            for item in items:
                item.own_markers = [m for m in item.own_markers
                                    if not (m.name == "skip" and "CUDA device" in str(m.kwargs.get("reason", "")))]

    return UnskipGpu()


def run_command(argv: list[str]) -> int:
    try:
        if argv[0] == "-m" and argv[1] == "pytest":
            import pytest

            return int(pytest.main(argv[2:], plugins=[_unskip_gpu_tests_plugin()]))
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<gpu_check step>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run after --")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["POOLBENCH_PLAN"] = "1"
    global RECORDER
    recorder = RECORDER = Recorder(args.out, args.step)
    started = time.perf_counter()
    install_triton_stand_ins(recorder)
    install_compile_stand_in(recorder)
    install_timing_stand_in(recorder, networks=command[:3] == ["-m", "poolbench", "run"])
    rc = 1
    try:
        rc = run_command(_rewrite(command, recorder))
    finally:
        recorder.save(rc, time.perf_counter() - started)
        print(f"[gpu_plan] {args.step}: {json.dumps(recorder.counts)} (rc {rc})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
