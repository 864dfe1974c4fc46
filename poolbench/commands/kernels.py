"""``poolbench kernels``: compile the fused GPU kernels for an architecture (no GPU needed) and report their code."""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "kernels",
        help="static GPU report: compile every fused kernel config for an arch, report registers/spills/SASS",
        description="Compiles every Triton kernel of the DPP triton tier (each variant, dtype and autotune config, "
        "with the launchers' own argument specialisations) for a CUDA architecture without a GPU, and reports "
        "per row: compiled, registers, spill bytes, shared memory, SASS instructions and SASS instructions per "
        "output window. CUDA-tier rows are added when the C++/CUDA tier provides them.",
    )
    parser.add_argument("--arch", default="sm_90", help="CUDA architecture, sm_XY (default sm_90)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON to this file")
    parser.add_argument("--md", type=Path, help="write a markdown table to this file")
    parser.set_defaults(func=run)


def run(args) -> int:
    if not re.fullmatch(r"sm_\d{2,3}a?", args.arch):
        raise ValueError(f"--arch must look like sm_90 or sm_80, got {args.arch!r}")
    from ..measure.kernel_report import ROW_KEYS, kernel_rows, write_reports

    rows, notes = kernel_rows(args.arch.removesuffix("a"),
                              progress=lambda label: print(f"[kernels] {label}", file=sys.stderr, flush=True))
    command = " ".join(shlex.quote(part) for part in ["poolbench", "kernels", *sys.argv[2:]])
    write_reports(rows, args.arch, args.json, args.md, notes, command)
    for row in rows:
        print("  ".join(str(row[key]) for key in ROW_KEYS if key != "error") + (f"  {row['error']}" if row["error"] else ""))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    failed = [row for row in rows if not row["compiled"]]
    return 1 if failed else 0
