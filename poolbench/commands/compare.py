"""``poolbench compare``: the benchmark regression gates (a thin shell over :mod:`poolbench.gate`).

``--metric time`` (default) runs the pytest-benchmark suite shipped in
``poolbench/benchmarks`` (every registered pooler × tier, plugins included, at
VGG-16's pooling shapes, forward and forward+backward), compares each time
ratio to ``avg_pool2d`` with the stored baseline in ``--baseline-dir``
(default ``benchmarks/baselines`` of the current directory), writes a markdown summary to
``reports/`` and exits 1 when a ratio regressed by more than ``--threshold``
or a tier stopped matching its reference.  ``--metric instructions`` counts
the same cases' instructions under valgrind's callgrind (deterministic, so
usable on a noisy CI machine; batch 1, 64² input) and exits 1 when a ratio
grew by more than 3% (per pooler × tier × pass) or 10% (one layer).
``--save-baseline`` stores the run as the new baseline instead.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .. import gate
from ._options import bounded_float, bounded_int


def _fraction(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.10 or 10%, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):  # --threshold inf would make a gate that can never fail
        raise argparse.ArgumentTypeError(f"the threshold must be a finite number > 0, got {text!r}")
    return value


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def add_parser(subparsers) -> None:
    defaults = gate.BenchConfig()
    parser = subparsers.add_parser(
        "compare",
        help="benchmark regression gate: every pooler's time ratio to avg_pool2d against the stored baseline",
        description=__doc__.split("\n\n", 1)[1].replace("``", "`"),
    )
    parser.add_argument("--metric", choices=("time", "instructions"), default="time",
                        help="time: CPU-time ratios via pytest-benchmark (default); instructions: callgrind "
                             "instruction-count ratios (needs valgrind; options marked 'time only' are ignored)")
    parser.add_argument("--threshold", type=_fraction, default=None,
                        help="fail when a pooler's ratio (per tier and pass, geometric mean over the five "
                             "layers) grows by more than this fraction: 0.10 or 10%% (default 0.10 for time, "
                             "0.03 for instructions)")
    parser.add_argument("--save-baseline", action="store_true",
                        help="store this run as the baseline (with --poolers/--tiers: refresh only those)")
    parser.add_argument("--repeat", type=bounded_int(1, 20), default=1, metavar="N",
                        help="time only, with --save-baseline: run the suite N times and store each case's median ratio")
    parser.add_argument("--poolers", nargs="+", type=_names, default=None, metavar="NAME",
                        help="benchmark only these poolers (default: every registered one)")
    parser.add_argument("--tiers", nargs="+", type=_names, default=None, metavar="TIER",
                        help="benchmark only these tiers (default: every tier but reference)")
    parser.add_argument("--report", type=Path, default=None, help="markdown summary to write; the run's JSON goes beside it "
                        "(default reports/bench_compare.md, for instructions reports/instruction_compare.md)")
    parser.add_argument("--device", default=defaults.device, choices=("cpu", "cuda"), help="device to benchmark on (default cpu)")
    parser.add_argument("--dtype", default=defaults.dtype, choices=("float32", "float16", "bfloat16"),
                        help="input dtype (default float32)")
    parser.add_argument("--batch", type=bounded_int(1, 65536), default=defaults.batch, help=f"time only: batch of the VGG-16 pooling shapes (default {defaults.batch})")
    parser.add_argument("--resolution", type=bounded_int(32, 8192), default=defaults.resolution,
                        help=f"time only: VGG-16 input resolution (default {defaults.resolution}; 112 is quicker but "
                             "overhead-bound)")
    parser.add_argument("--threads", type=bounded_int(1, 1024), default=defaults.threads, help=f"time only: CPU threads while timing (default {defaults.threads}: "
                        "then CPU time is measured, which ignores other processes)")
    parser.add_argument("--budget", type=bounded_float(0, 60), default=defaults.budget_s, help=f"time only: seconds of timing per case (default {defaults.budget_s})")
    parser.add_argument("--baseline-dir", type=Path, default=gate.DEFAULT_BASELINE_DIR,
                        help="folder holding the baselines, relative to the current directory (default benchmarks/baselines; "
                             "instruction baselines in its instructions/)")
    parser.add_argument("--baseline-name", default=None,
                        help="time only: baseline file name (default: the device plus the options that differ from the defaults, "
                             "e.g. cpu or cpu-r112)")
    parser.add_argument("--case-threshold", type=_fraction, default=None,
                        help="fail when a single layer's ratio grows by more than this (default 3 × --threshold "
                             "for time, 0.10 for instructions)")
    parser.add_argument("--confirm", type=bounded_int(0, 10), default=2, metavar="N",
                        help="time only: re-measure suspected regressions in up to N fresh processes before failing (default 2; 0: never)")
    parser.add_argument("--compare-fail", action="append", default=[], metavar="EXPR",
                        help="time only: also pass --benchmark-compare-fail=EXPR to pytest-benchmark (absolute times, "
                             "only when the baseline was recorded on this machine id), e.g. min:50%%")
    parser.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                        help="import MODULE in the benchmark process first (a pooler outside the tree)")
    parser.add_argument("--quiet", action="store_true", help="do not echo pytest's output")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.metric == "instructions":
        return _run_instructions(args)
    config = gate.BenchConfig(device=args.device, dtype=args.dtype, batch=args.batch, resolution=args.resolution,
                              threads=args.threads, budget_s=args.budget)
    options = gate.GateOptions(
        config=config, threshold=args.threshold or gate.DEFAULT_THRESHOLD, case_threshold=args.case_threshold,
        poolers=flatten(args.poolers), tiers=flatten(args.tiers),
        save_baseline=args.save_baseline, baseline_dir=args.baseline_dir, baseline_name=args.baseline_name,
        report=args.report or gate.DEFAULT_REPORT, confirm=args.confirm, repeat=args.repeat,
        compare_fail=args.compare_fail, plugins=args.plugins, echo=not args.quiet,
    )
    return _gate("benchmark gate", gate.run_gate, options, lambda result: f"{result.duration_s:.0f} s")


def flatten(groups) -> list[str] | None:
    """``--poolers a,b --poolers c`` → ``[a, b, c]``; ``None`` when the option was not given."""
    return [name for group in groups for name in group] if groups else None


def _run_instructions(args) -> int:
    from ..gate import instruction_gate

    if args.device != "cpu" or args.dtype != "float32":
        raise ValueError("--metric instructions counts CPU float32 instructions only (valgrind sees no GPU)")
    options = instruction_gate.InstructionGateOptions(
        poolers=flatten(args.poolers), tiers=flatten(args.tiers), save_baseline=args.save_baseline,
        baseline_dir=args.baseline_dir, report=args.report or instruction_gate.DEFAULT_REPORT, plugins=args.plugins,
        echo=not args.quiet, threshold=args.threshold or instruction_gate.GROUP_THRESHOLD,
        case_threshold=args.case_threshold or instruction_gate.CASE_THRESHOLD,
    )
    return _gate("instruction gate", instruction_gate.run_instruction_gate, options,
                 lambda result: f"{result.duration_s:.0f} s wall; valgrind {result.run.wall_s:.0f} s wall, "
                                f"{result.run.cpu_s:.0f} s CPU")


def _gate(gate_name: str, run_gate, options, timing) -> int:
    """Run a gate; print its messages, its report and the PASS/FAIL line; the exit code (1 on FAIL).

    A baseline that cannot be compared with (missing, unreadable, crafted,
    other settings) means the gate checked nothing: it fails, exit 1; so
    does a gate that cannot measure at all (no valgrind, valgrind died).
    """
    try:
        result = run_gate(options)
    except (gate.BaselineError, RuntimeError) as exc:
        print(f"FAILED {exc}\n{gate_name}: FAIL")
        return 1
    print()
    for message in result.messages:
        print(message)
    if result.report_path is not None:
        print(f"report: {result.report_path}")
    print(f"{gate_name}: {'PASS' if result.passed else 'FAIL'} ({timing(result)})")
    return 0 if result.passed else 1
