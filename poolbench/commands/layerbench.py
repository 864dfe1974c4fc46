"""``poolbench layerbench``: every DPP tier vs avg_pool2d and max_pool2d at VGG-16's pooling layers."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import torch

from ..run.layerbench import run_layerbench, to_markdown
from ..measure.timing import ROUND_STATISTIC, check_timing
from ..run.results import check_output_file
from ..measure.shapes import pool_layer_models
from ..tolerances import DTYPES
from ._options import add_training_options, bounded_float, bounded_int



def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "layerbench",
        help="per-layer speed (ratios to avg/max pooling), bandwidth and memory of every DPP tier",
        description="Times forward and forward+backward of every registered DPP tier available on the device at "
        "VGG-16's five pooling shapes, divided by avg_pool2d and max_pool2d measured in the same run; reports "
        "achieved bandwidth (and the fraction of the GPU's peak) and training-memory ratios to avg_pool2d. "
        "Prints a markdown table.",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=bounded_int(1, 65536), default=2, help="batch size of the layer inputs (default 2)")
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    parser.add_argument("--tiers", nargs="+", help="only these DPP tiers (default: every available one but reference)")
    parser.add_argument("--variants", nargs="+", default=["dpp_lite_sym"],
                        help="DPP variants (default dpp_lite_sym; e.g. dpp_full_asym)")
    parser.add_argument("--model", default="vgg16", choices=pool_layer_models(),
                        help="whose pooling layers, any registered network: e.g. vgg16 (five 2x2/2) or resnet50 "
                             "(3x3/2 pad 1 stem + three 2x2/2)")
    parser.add_argument("--layers", nargs="+", type=bounded_int(1, 16),
                        help="pooling layers of --model, 1-based (default all)")
    parser.add_argument("--resolution", type=bounded_int(32, 8192), default=224, help="input image size (default 224)")
    parser.add_argument("--min-run-time", type=bounded_float(0, 60), default=0.2, help="seconds of timing per measurement")
    parser.add_argument("--repeats", type=bounded_int(1, 100), default=3,
                        help="interleaved rounds per layer (default 3); ratios are paired per round")
    parser.add_argument("--statistic", default=ROUND_STATISTIC, choices=("median", "min"),
                        help="how a subject's round medians become its time (bandwidth columns): min (default, the "
                             "least-disturbed round, as poolbench run) or median")
    parser.add_argument("--threads", type=bounded_int(1, 1024), help="CPU threads (torch.set_num_threads); default torch's setting")
    add_training_options(parser, subject="pooling")
    parser.add_argument("--out", type=Path, help="also write the markdown report to this file")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but CUDA is not available (torch.cuda.is_available() is False)")
    check_timing(args.timing, args.device)  # before any measuring: graph timing needs CUDA
    if args.out is not None:
        check_output_file(args.out)  # before minutes of measuring, not after

    def progress(message: str) -> None:
        print(f"[layerbench] {message}", file=sys.stderr, flush=True)

    command = _command_line(args)

    def save_partial(rows, meta) -> None:  # a run cut short (time limit) still leaves its finished layers
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(to_markdown(rows, meta, command=command) + "\n(partial: run in progress)\n",
                                encoding="utf-8")

    rows, meta = run_layerbench(
        device=args.device, batch=args.batch, dtype=DTYPES[args.dtype], tiers=args.tiers, variants=args.variants,
        resolution=args.resolution, layers=args.layers, min_run_time=args.min_run_time, repeats=args.repeats,
        statistic=args.statistic, threads=args.threads,
        progress=progress, on_layer=save_partial, model=args.model, timing=args.timing, amp=args.amp,
        channels_last=args.channels_last,
    )
    report = to_markdown(rows, meta, command=command)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
        print(f"[layerbench] wrote {args.out}", file=sys.stderr)
    return 0


def _command_line(args) -> str:
    """The equivalent command line, for the report (rebuilt from the parsed arguments)."""
    parts = ["poolbench", "layerbench", "--device", args.device, "--batch", str(args.batch), "--dtype", args.dtype]
    if args.model != "vgg16":
        parts += ["--model", args.model]
    for flag, value in (("--tiers", args.tiers), ("--variants", args.variants), ("--layers", args.layers)):
        if value:
            parts += [flag, *map(str, value)]
    if args.resolution != 224:
        parts += ["--resolution", str(args.resolution)]
    parts += ["--repeats", str(args.repeats), "--min-run-time", str(args.min_run_time)]
    if args.statistic != ROUND_STATISTIC:
        parts += ["--statistic", args.statistic]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    if args.timing != "eager":
        parts += ["--timing", args.timing]
    if args.amp != "off":
        parts += ["--amp", args.amp]
    if args.channels_last:
        parts.append("--channels-last")
    if args.out is not None:
        parts += ["--out", str(args.out)]
    return " ".join(shlex.quote(part) for part in parts)
