"""``poolbench report RESULTS…``: render the markdown report of one results file, or one report over several."""
from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="render <out>/<name>.md from a results file written by `poolbench run` (or one report over several)",
        description="Render a markdown report (tables per network and per layer, plots, paper vs measured) from "
                    "a .jsonl or .csv results file.  Given several files (other hosts or GPUs), render one report "
                    "with a side-by-side table per network, one column group per device, ratios always against "
                    "the same device's baseline, and the settings that differ between the files.",
    )
    parser.add_argument("results", type=Path, nargs="+",
                        help="results file(s) (.jsonl or .csv) written by `poolbench run`")
    parser.add_argument("--out", type=Path, help="one file: output directory (default: the results file's "
                        "directory); several files: the report's .md path (default: merged.md next to the first)")
    parser.add_argument("--name", help="report name for one file (default: the results file's stem)")
    parser.set_defaults(func=run)


def run(args) -> int:
    if len(args.results) == 1:
        from ..report import write_report

        print(write_report(args.results[0], args.out, args.name))
        return 0
    from ..report.devices import write_merged_report
    from ..run.results import check_output_file

    if args.name is not None:
        raise ValueError("--name applies to one results file; with several, give the report's path with --out")
    out = args.out or args.results[0].parent / "merged.md"
    if out.suffix != ".md":
        out = out / "merged.md" if out.is_dir() else out.with_name(out.name + ".md")
    check_output_file(out)
    print(write_merged_report(args.results, out))
    return 0
