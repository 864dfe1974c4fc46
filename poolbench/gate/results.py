"""What a suite run produced: per-case ratios read from pytest-benchmark JSON, and test outcomes."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..measure.cases import BenchCase, format_shape
from ..measure.config import COMPARATOR, BenchConfig
from .baseline_file import BaselineError, positive_int, positive_number, read_baseline_json
from .equivalence import Equivalence

#: What records a fresh time baseline (named in every refusal of a stored one).
RECORD_COMMAND = "poolbench compare --save-baseline"


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


def load_benchmarks(data: dict | str | Path, source: str | None = None, *,
                    baseline: bool = False) -> dict[tuple, CaseResult]:
    """The gate's benchmarks in a pytest-benchmark JSON document (a path or the parsed dict).

    A document that is not pytest-benchmark JSON, or a gate benchmark with a
    field of the wrong type, is a ValueError naming the file; entries without
    the gate's ``extra_info`` are ignored (they are not poolbench cases).
    With ``baseline``, every ratio must be a finite number > 0 (a stored
    NaN would compare as "unchanged" with anything, a zero or an infinity
    would break the comparison): a :class:`BaselineError` otherwise.
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
            result = _case_result(bench, info)
            if baseline and result.ratio is not None:
                positive_number(result.ratio, "its ratio")
        except (KeyError, TypeError, ValueError) as exc:
            error = BaselineError if baseline else ValueError
            raise error(f"{source}: benchmark {str(bench.get('fullname', '?'))[:200]!r} is malformed "
                        f"({type(exc).__name__}: {exc})") from None
        results[result.key] = result
    return results


def _case_result(bench: dict, info: dict) -> CaseResult:
    """One gate benchmark, every field checked for its type (a crafted file fails here, not deep in a comparison)."""
    stats = bench["stats"]
    if not isinstance(stats, dict):
        raise TypeError("stats must be an object")
    for name in ("pooler", "tier", "pass"):
        if not isinstance(info[name], str):
            raise TypeError(f"{name} must be a string, got {info[name]!r}")
    shape = info["shape"]
    if not isinstance(shape, list) or not shape:
        raise TypeError(f"shape must be a list of sizes, got {shape!r}")
    ratio = info.get("ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))):
        raise TypeError(f"ratio must be a number, got {ratio!r}")
    config = info.get("config", {})
    if not isinstance(config, dict):
        raise TypeError(f"config must be an object, got {config!r}")
    equivalence = info.get("equivalence")
    if equivalence is not None and not isinstance(equivalence, dict):
        raise TypeError(f"equivalence must be an object, got {equivalence!r}")
    comparator = info.get("comparator_median_s")
    return CaseResult(
        pooler=info["pooler"], tier=info["tier"], layer=positive_int(info["layer"], "layer"),
        shape=tuple(positive_int(size, "a size in shape") for size in shape), pass_=info["pass"], ratio=ratio,
        median_s=_number(stats["median"], "stats.median"),
        comparator_median_s=None if comparator is None else _number(comparator, "comparator_median_s"),
        rounds=int(_number(stats.get("rounds", 0), "stats.rounds")), equivalence=equivalence, config=config,
        fullname=str(bench.get("fullname", "")),
    )


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {value!r}")
    return value


def read_json(path: Path) -> dict:
    """Parsed JSON of the time baseline ``path``, read through the gates' validating loader (BaselineError)."""
    return read_baseline_json(path, RECORD_COMMAND)


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
