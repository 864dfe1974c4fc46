"""``poolbench check``: prove every tier equal to the reference (outputs and gradients)."""
from __future__ import annotations

import json
import sys

import torch
from rich.progress import Progress
from rich.table import Table

from ._console import console, print_table
from ..verify.check import CASES, CheckPlan, checked_nothing, run_checks, summarise
from ._options import bounded_int
from ..tolerances import DTYPES



def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("check", help="compare every tier with the float64 reference (values + gradients)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="dtype the tiers run in")
    parser.add_argument("--poolers", nargs="+", help="only these poolers (default: all)")
    parser.add_argument("--tiers", nargs="+", help="only these tiers (default: all)")
    parser.add_argument("--no-gradcheck", action="store_true", help="skip torch.autograd.gradcheck")
    parser.add_argument("--cases", type=bounded_int(1, len(CASES)), default=len(CASES),
                        help=f"only the first N of the {len(CASES)} standard cases (the first two: a 2x2/2 and a "
                             "3x3/2 pad 1 window; what a short GPU check compiles kernels for)")
    parser.add_argument("--json", action="store_true", help="print every result as JSON instead of a table")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but CUDA is not available (torch.cuda.is_available() is False)")
    plan = CheckPlan(poolers=args.poolers, tiers=args.tiers, device=args.device, dtype=DTYPES[args.dtype],
                     gradcheck=not args.no_gradcheck, cases=CASES[:args.cases])
    err = console(stderr=True)
    with Progress(console=err, transient=True, disable=args.json or not err.is_terminal) as progress:
        task = progress.add_task("checking", total=None)

        def advance(label: str, total: int) -> None:
            progress.update(task, total=total, advance=1, description=label)

        results = run_checks(plan, advance)
    rows = summarise(results)
    failed = [row for row in rows if row["status"] == "fail"]
    if args.json:
        json.dump({"results": [r.as_dict() for r in results], "summary": rows}, sys.stdout, indent=1, default=str)
        print()
    else:
        _print_table(rows, args)
    if checked_nothing(results):
        print("poolbench check: FAILED nothing was checked (every selected tier was skipped, or none was selected)",
              file=sys.stderr)
        return 1
    return 1 if failed else 0


def _print_table(rows: list[dict], args) -> None:
    table = Table(title=f"poolbench check on {args.device}, {args.dtype} vs float64 reference "
                        "(errors in units of the tolerance: ≤ 1 passes)")
    for column in ("pooler", "tier", "cases", "output err", "grad err", "max |Δ| out", "max |Δ| grad", "gradcheck", "status"):
        table.add_column(column)
    style = {"pass": "green", "fail": "bold red", "skip": "dim"}
    for row in rows:
        status = row["status"] + (f" ({row['detail']})" if row["detail"] else "")
        table.add_row(row["pooler"], row["tier"], "ground truth" if row["tier"] == "reference" else str(row["cases"]), f"{row['worst output error']:.3g}",
                      f"{row['worst grad error']:.3g}", f"{row['max abs output error']:.2e}",
                      f"{row['max abs grad error']:.2e}", row["gradcheck"], f"[{style[row['status']]}]{status}")
    print_table(table)
