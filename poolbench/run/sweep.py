"""``poolbench run`` as a library call: one process or one torchrun rank, then the report.

Why here and not in the runner: the local loop (:mod:`.runner`) and a torchrun
rank (:mod:`.rank`) only measure; choosing between them and rendering the
report from the merged file is the caller's job, so neither imports the other
or the report.
"""
from __future__ import annotations

from ..report import write_report
from . import distributed
from .rank import run_rank
from .runner import RunConfig, RunResult, run_local

__all__ = ["run"]


def run(config: RunConfig, *, progress: bool = True, report: bool = True) -> RunResult:
    """Measure ``config``'s grid (this process, or this rank under torchrun), then write the report.

    Under torchrun only rank 0 renders the report, from the merged shards, listing the cells no
    rank measured; every other rank returns its own shard's result.
    """
    launch = distributed.detect()
    result = run_rank(config, launch) if launch is not None else run_local(config, progress=progress)
    merged_by_rank0 = launch is not None and launch.rank == 0 and result.results.exists() \
        and result.results.stat().st_size > 0
    if report and (launch is None or merged_by_rank0):
        result.report = write_report(result.results, config.out, missing=result.missing)
    return result
