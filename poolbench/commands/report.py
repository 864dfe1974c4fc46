"""``poolbench report RESULTS``: render the markdown report (and plots) of a results file."""
from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="render <out>/<name>.md from a results file written by `poolbench run`",
        description="Render a markdown report (tables per network and per layer, plots, paper vs measured) from "
                    "a .jsonl or .csv results file.",
    )
    parser.add_argument("results", type=Path, help="results file (.jsonl or .csv) written by `poolbench run`")
    parser.add_argument("--out", type=Path, help="output directory (default: the results file's directory)")
    parser.add_argument("--name", help="report name (default: the results file's stem)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..report import write_report

    path = write_report(args.results, args.out, args.name)
    print(path)
    return 0
