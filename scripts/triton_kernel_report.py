"""Regenerate the Triton rows of the static kernel report (sm_90) with the installed triton, no GPU needed.

    python scripts/triton_kernel_report.py OUT.json OUT.md [PREVIOUS.json]

With PREVIOUS.json the CUDA rows of that report are carried over unchanged (compiling the CUDA tier
needs nvcc and minutes); without it the report holds the Triton rows only (e.g. from a CPU twin of the
GPU image, whose triton version differs from the local one).  ``poolbench kernels`` compiles both tiers.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poolbench.measure import kernel_report as kr  # noqa: E402


def main(argv) -> int:
    out_json, out_md = Path(argv[0]), Path(argv[1])
    carry = argv[2] if len(argv) > 2 else ""
    rows = kr.triton_kernel_rows("sm_90", progress=lambda label: print(label, file=sys.stderr, flush=True))
    notes = []
    if carry:
        cuda = [dict(row, mufu_per_window=row.get("mufu_per_window"))
                for row in json.loads(Path(carry).read_text())["rows"] if row["tier"] == "cuda"]
        rows += cuda
        notes.append(f"CUDA rows ({len(cuda)}) carried over unchanged from the previous {carry} (not recompiled; "
                     "they count the CUDA tier's static span, see impls/dpp_ext/static_report.py)")
    else:
        notes.append("Triton rows only; CUDA rows: reports/kernels_sm90.md")
    kr.write_reports(rows, "sm_90", out_json, out_md, notes,
                     command=" ".join(["python scripts/triton_kernel_report.py", *argv]))
    failed = [row for row in rows if row["tier"] == "triton" and not row["compiled"]]
    print(f"{len(rows)} rows, {len(failed)} Triton rows failed to compile")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
