"""Running the pytest-benchmark suite (:mod:`poolbench.benchmarks`) in a fresh interpreter.

The suite ships inside the package, so an installed poolbench can gate a
user's own plugin poolers from the user's repository: the suite runs with the
caller's directory as working directory (and on ``PYTHONPATH``, so a plugin
module there imports), wherever poolbench itself is installed.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from ..measure.cases import split_names
from ..measure.config import BenchConfig
from .results import Outcome, SuiteRun
from .shell import stream

#: The folder of the pytest-benchmark suite, inside the installed package.
SUITE_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
#: Environment of the benchmark process (unless already set).  glibc's malloc is told to keep
#: what is freed (no trimming, 1 GiB of top padding, a fixed mmap threshold), so that the
#: large tensors of the first layers are reused instead of page-faulted in on every call.
#: Without it, page faults were half of a pooler's CPU time at 1x64x224x224 and how many
#: there were depended on what the process had allocated before: a pooler's ratio moved by
#: up to 90% between two unchanged runs.
SUITE_ENV = {
    "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30),
    "MALLOC_TOP_PAD_": str(2**30),
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
}
SUITE_FILE = SUITE_DIR / "test_bench_poolers.py"


def suite_node(nodeid: str) -> str:
    """A suite test id as pytest-benchmark stores it (relative to :data:`SUITE_DIR`), made absolute for a rerun."""
    return nodeid if Path(nodeid.split("::", 1)[0]).is_absolute() else str(SUITE_DIR / nodeid)


def suite_arguments(config: BenchConfig, poolers=None, tiers=None) -> list[str]:
    """The suite's own pytest options for ``config`` (see ``poolbench/benchmarks/conftest.py``)."""
    args = ["--device", config.device, "--dtype", config.dtype,
            f"--bench-batch={config.batch}", f"--bench-resolution={config.resolution}",
            f"--bench-threads={config.threads}", f"--bench-budget={config.budget_s}",
            f"--bench-min-rounds={config.min_rounds}", f"--bench-max-rounds={config.max_rounds}",
            f"--bench-crop={config.crop}", f"--bench-seed={config.seed}", f"--bench-clock={config.clock}",
            f"--benchmark-timer={config.timer_name}"]
    if split_names(poolers):
        args.append(f"--bench-poolers={','.join(split_names(poolers))}")
    if split_names(tiers):
        args.append(f"--bench-tiers={','.join(split_names(tiers))}")
    return args


def run_suite(config: BenchConfig, *, poolers=None, tiers=None, select: Sequence[str] | None = None,
              cwd: str | Path | None = None, plugins: Sequence[str] = (), env: dict | None = None,
              storage: Path | None = None, compare_with: str | None = None, compare_fail: Sequence[str] = (),
              extra_args: Sequence[str] = (), echo: bool = True) -> SuiteRun:
    """Run the suite in a fresh interpreter in ``cwd`` (default: here) and collect its JSON and outcomes.

    ``select`` restricts the run to those test node ids (the confirmation
    rerun); ``plugins`` are modules imported first (``pytest -p``: a pooler
    living outside the tree, a test double); ``compare_with`` and
    ``compare_fail`` are handed to pytest-benchmark's ``--benchmark-compare``
    and ``--benchmark-compare-fail`` (absolute times, same machine only).
    """
    cwd = Path(cwd or Path.cwd()).resolve()
    with tempfile.TemporaryDirectory(prefix="poolbench-gate-") as tmp:
        json_path, outcomes_path = Path(tmp) / "bench.json", Path(tmp) / "outcomes.jsonl"
        targets = [suite_node(nodeid) for nodeid in select] if select else [str(SUITE_DIR)]
        command = [sys.executable, "-m", "pytest", *targets, f"--rootdir={SUITE_DIR}", "-m", "bench",
                   "--benchmark-enable", f"--benchmark-json={json_path}", "--benchmark-columns=median,iqr,rounds",
                   "--benchmark-sort=name", f"--bench-outcomes={outcomes_path}", "-p", "no:cacheprovider",
                   "-q", "-rfEs", *suite_arguments(config, poolers, tiers)]
        for plugin in plugins:
            command += ["-p", plugin]
        if compare_with and storage is not None:
            command += [f"--benchmark-storage={storage}", f"--benchmark-compare={compare_with}"]
            command += [f"--benchmark-compare-fail={expr}" for expr in compare_fail]
        command += list(extra_args)
        process_env = {**SUITE_ENV, **os.environ, **(env or {})}
        # The suite imports this very poolbench (installed or not) and the caller's own plugin modules.
        package_root = str(SUITE_DIR.parents[1])
        process_env["PYTHONPATH"] = os.pathsep.join(
            dict.fromkeys(p for p in (str(cwd), package_root, process_env.get("PYTHONPATH", "")) if p))
        start = time.perf_counter()
        returncode, output = stream(command, env=process_env, cwd=cwd, echo=echo)
        duration = time.perf_counter() - start
        # pytest-benchmark opens the JSON file while parsing options: a usage error leaves it empty.
        text = json_path.read_text() if json_path.exists() else ""
        data = json.loads(text) if text.strip() else {"benchmarks": []}
        outcomes = []
        if outcomes_path.exists():
            for line in outcomes_path.read_text().splitlines():
                record = json.loads(line)
                outcomes.append(Outcome(record["nodeid"], record["outcome"], record.get("message", "")))
    return SuiteRun(returncode, data, outcomes, duration, output, command)
