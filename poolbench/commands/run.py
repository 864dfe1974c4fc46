"""``poolbench run``: measure networks and pooling layers, append results, write the report."""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from ..metrics import Settings
from ._options import add_training_options, bounded_float, bounded_int


def _names(value: str) -> tuple[str, ...]:
    return tuple(item for part in value for item in part.split(",") if item)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="measure every pooler in VGG-16 / ResNet-50 / ResNet-101 and write a markdown report",
        description="Measure the model × pooler × tier × metric grid (latency, memory, MACs, parameters), per "
                    "network and per pooling layer, append each cell to <out>/<name>.jsonl/.csv as it finishes, "
                    "and render <out>/<name>.md.  Failing cells are recorded with their error; the run goes on.",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to measure (default: cpu)")
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="vgg16, resnet50, resnet101 (default: all)")
    parser.add_argument("--poolers", nargs="+", metavar="POOLER", help="registered pooler names (default: all; "
                        "--quick: max avg dpp_lite_sym dpp_full_sym softpool lip)")
    parser.add_argument("--tiers", nargs="+", metavar="TIER",
                        help="tiers to measure, or 'fastest' for the fastest available per pooler "
                             "(default: every registered tier but reference; --quick: fastest)")
    parser.add_argument("--metrics", nargs="+", metavar="METRIC", help="metric names (default: all)")
    parser.add_argument("--batch", type=bounded_int(1, 65536), help="batch size (default: 8 on cpu, 32 on cuda; --quick: 1)")
    parser.add_argument("--resolution", type=bounded_int(32, 8192), help="input height = width (default: 224; --quick: 64)")
    parser.add_argument("--no-layers", action="store_true", help="measure whole networks only")
    parser.add_argument("--placement", choices=("paper", "authors", "both"), default="paper",
                        help="where ResNets get the pooler: the paper's sites (default), the authors' code's "
                             "(after each stride-2 block, stem max pool kept; networks named <model>@authors), "
                             "or both side by side")
    parser.add_argument("--quick", action="store_true",
                        help="small batch and resolution, a subset of poolers, fastest tiers: a few minutes on 2 "
                             "CPU cores, still a full report")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output directory (default: reports/)")
    parser.add_argument("--name", help="file name stem (default: quick_<device> or run_<device>)")
    parser.add_argument("--resume", action="store_true",
                        help="append to the results file and skip cells already measured (refused if the file was "
                             "measured with other settings); without it an existing file is moved aside, not deleted")
    parser.add_argument("--min-run-time", type=bounded_float(0, 60), help="seconds of timed runs per latency "
                        "measurement, at most 60 (default: 0.2; --quick: 0.05)")
    parser.add_argument("--rounds", type=bounded_int(1, 100), help="latency rounds per cell, best median kept (robust to other "
                        "processes on a shared CPU; default: 3 on cpu, 1 on cuda)")
    parser.add_argument("--threads", type=bounded_int(1, 1024), help="CPU threads (default: torch's; --quick: 1, because on a shared "
                        "machine multi-threaded timings swing 10x)")
    parser.add_argument("--rank-timeout", type=bounded_float(0, 7 * 86400), default=1800.0,
                        help="under torchrun: seconds rank 0 waits for a rank that neither finishes nor claims work "
                             "before it counts as dead and its cells are listed as missing (default: 1800)")
    add_training_options(parser, subject="network or layer")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..run.runner import QUICK, RunConfig
    from ..run.sweep import run as run_grid

    options = {
        "device": args.device,
        "models": _names(args.models) if args.models else None,
        "poolers": _names(args.poolers) if args.poolers else None,
        "tiers": _names(args.tiers) if args.tiers else None,
        "metrics": _names(args.metrics) if args.metrics else None,
        "batch": args.batch,
        "resolution": args.resolution,
        "layers": False if args.no_layers else None,
        "out": args.out,
        "name": args.name,
        "resume": args.resume or None,
        "threads": args.threads,
        "placement": args.placement,
        "rank_timeout_s": args.rank_timeout,
        "amp": args.amp,
        "channels_last": args.channels_last,
    }
    if args.quick:
        base = QUICK["settings"]
    else:
        base = Settings(rounds=3 if args.device == "cpu" else 1)
    options["settings"] = Settings(warmup=base.warmup,
                                   min_run_time=args.min_run_time if args.min_run_time is not None else base.min_run_time,
                                   rounds=args.rounds if args.rounds is not None else base.rounds,
                                   timing=args.timing)
    if args.quick:
        config = RunConfig.quick_preset(**options)
    else:
        if options["batch"] is None:
            options["batch"] = 32 if args.device == "cuda" else 8
        config = RunConfig(**{k: v for k, v in options.items() if v is not None})
    console = Console(stderr=True)
    start = time.perf_counter()
    result = run_grid(config, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    console.print(f"{result.rows} rows ({result.errors} errors, {result.skipped} skipped) in {elapsed:.0f} s")
    console.print(f"results: {result.results} and {result.csv}")
    for path in result.moved_aside:
        console.print(f"the previous run's results were kept as {path}")
    if result.report is not None:
        console.print(f"report: {result.report}")
    if result.missing:
        for model, pooler, tier, scope, layer, metric in result.missing[:10]:
            console.print(f"not measured: {model} {pooler}[{tier}] {layer or scope} {metric}", highlight=False)
        more = f" ({len(result.missing) - 10} more in the report)" if len(result.missing) > 10 else ""
        console.print(f"{len(result.missing)} cell(s) were not measured{more}: rerun the same command with "
                      "--resume to measure exactly those")
        return 1
    return 0
