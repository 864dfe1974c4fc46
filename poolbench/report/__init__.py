"""Markdown reports from results files: one device's run, or several devices side by side.

``write_report`` renders one results file (the layout of :mod:`.run_report`,
or :mod:`.devices`' side-by-side layout when the file holds rows of several
hosts or device models, as a multi-host torchrun run does);
``write_merged_report`` renders several files as one. Shared table helpers
live in :mod:`.tables`.
"""
from __future__ import annotations

from pathlib import Path

from ..run.results import DEVICE_COLUMNS, load_results
from .devices import build_device_report, write_merged_report
from .run_report import PAPER, build_report, paper_vs_measured, write_plots
from .tables import missing_section

__all__ = ["PAPER", "build_device_report", "build_report", "missing_section", "paper_vs_measured",
           "write_merged_report", "write_report"]


def write_report(results: str | Path, out_dir: str | Path | None = None, name: str | None = None, *,
                 missing=()) -> Path:
    """Render ``<out_dir>/<name>.md`` (+ PNG plots) from a results file; returns the markdown path.

    A file measured on several hosts or device models (a multi-host torchrun
    run) gets the side-by-side layout of :mod:`poolbench.report.devices`.
    """
    results = Path(results)
    frame = load_results(results)
    out_dir = Path(out_dir) if out_dir is not None else results.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or results.stem
    path = out_dir / f"{name}.md"
    devices = [column for column in DEVICE_COLUMNS if column in frame.columns]
    if devices and len(frame[devices].drop_duplicates()) > 1:
        path.write_text(build_device_report(frame, name, missing), encoding="utf-8")
        return path
    plots, plot_note = write_plots(frame, out_dir, name)
    path.write_text(build_report(frame, name, plots, plot_note, missing), encoding="utf-8")
    return path
