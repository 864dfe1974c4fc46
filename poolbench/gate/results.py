"""What a suite run produced: per-case ratios read from pytest-benchmark JSON, and test outcomes."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..measure.cases import BenchCase, format_shape
from ..measure.config import COMPARATOR, BenchConfig
from .equivalence import Equivalence


class BaselineError(ValueError):
    """The stored baseline cannot be compared with (unreadable, empty, foreign): the gate fails, exit 1."""


@dataclass(frozen=True)
class CaseResult:
    """One benchmark's ratio and context, read from pytest-benchmark JSON."""

    pooler: str
    tier: str
    layer: int
    shape: tuple[int, ...]
    pass_: str
    ratio: float | None
    median_s: float
    comparator_median_s: float | None
    rounds: int
    equivalence: dict | None
    config: dict
    fullname: str

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.pooler, self.tier, self.layer, self.pass_)

    @property
    def label(self) -> str:
        return f"{self.pooler}[{self.tier}] layer{self.layer} {format_shape(self.shape)} {self.pass_}"


def load_benchmarks(data: dict | str | Path, source: str | None = None) -> dict[tuple, CaseResult]:
    """The gate's benchmarks in a pytest-benchmark JSON document (a path or the parsed dict).

    A document that is not pytest-benchmark JSON is a ValueError naming the
    file; entries without the gate's ``extra_info`` are ignored (they are not
    poolbench cases).
    """
    if isinstance(data, (str, Path)):
        source = source or str(data)
        data = read_json(Path(data))
    source = source or "the benchmark document"
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benchmarks, list):
        raise ValueError(f"{source} is not pytest-benchmark JSON (no 'benchmarks' list)")
    results = {}
    for bench in benchmarks:
        info = bench.get("extra_info") if isinstance(bench, dict) else None
        if not isinstance(info, dict) or "pooler" not in info:
            continue  # not one of the gate's benchmarks
        try:
            result = CaseResult(
                pooler=info["pooler"], tier=info["tier"], layer=int(info["layer"]), shape=tuple(info["shape"]),
                pass_=info["pass"], ratio=info.get("ratio"), median_s=bench["stats"]["median"],
                comparator_median_s=info.get("comparator_median_s"), rounds=bench["stats"].get("rounds", 0),
                equivalence=info.get("equivalence"), config=info.get("config", {}), fullname=bench.get("fullname", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: benchmark {bench.get('fullname', '?')!r} is malformed "
                             f"({type(exc).__name__}: {exc})") from None
        results[result.key] = result
    return results


def read_json(path: Path) -> dict:
    """Parsed JSON of ``path``; unreadable, empty or invalid files are a ValueError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not text.strip():
        raise ValueError(f"{path} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                         "truncated or not written by poolbench") from None


def extra_info(case: BenchCase, config: BenchConfig, equivalence: Equivalence | None, timing: dict) -> dict:
    """What the suite stores with each benchmark."""
    info = {"pooler": case.pooler, "tier": case.tier, "layer": case.layer, "shape": list(case.shape),
            "pass": case.pass_, "comparator": COMPARATOR, "config": config.identity(),
            "torch": torch.__version__}
    if equivalence is not None:
        info["equivalence"] = equivalence.as_dict()
    info.update(timing)
    return info


@dataclass
class Outcome:
    """A test's outcome in the suite run (from the suite's outcome log)."""

    nodeid: str
    outcome: str  # passed | failed | skipped | error
    message: str = ""

    @property
    def case_id(self) -> str:
        match = re.search(r"\[(.*)\]$", self.nodeid)
        return match.group(1) if match else self.nodeid


@dataclass
class SuiteRun:
    """One run of the pytest-benchmark suite."""

    returncode: int
    data: dict
    outcomes: list[Outcome]
    duration_s: float
    output: str
    command: list[str]

    @property
    def benchmarks(self) -> dict[tuple, CaseResult]:
        return load_benchmarks(self.data)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome in ("failed", "error")]

    @property
    def skipped(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome == "skipped"]
