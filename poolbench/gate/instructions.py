"""Instruction counts of every pooler × tier, as ratios to ``avg_pool2d``: one valgrind process for all cases.

:func:`count_instructions` writes a plan, runs
:mod:`poolbench.gate.instruction_worker` under callgrind
(:mod:`poolbench.gate.callgrind`) and turns the per-call dumps into
:class:`InstructionCount` records.  The cases are the time gate's
(:func:`poolbench.gate.bench_cases`: every registered pooler × tier but the
float64 reference, VGG-16's five pooling shapes, forward and
forward+backward), at a small input (batch 1, 64² network input) so that
valgrind finishes in minutes, single-threaded.

Why a ratio: a torch upgrade or another compiler moves ``avg_pool2d``'s count
as well, so the ratio keeps meaning "how much more work than average pooling".
"""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .. import registry
from . import callgrind
from ..measure import BenchCase, BenchConfig
from ..measure.cases import format_shape, split_names
from .shell import stream
from .suite import SUITE_ENV

__all__ = ["INSTRUCTION_CONFIG", "UNCOUNTED_TIERS", "InstructionCount", "InstructionRun", "count_instructions", "worker_environment"]

#: Batch 1 at a 64² network input: (1,64,64,64) ... (1,512,4,4), small enough for valgrind,
#: big enough that the pooling work, not Python's call overhead, dominates the first layers.
INSTRUCTION_CONFIG = BenchConfig(batch=1, resolution=64, threads=1)
#: -march for code compiled while measuring (the cpp tier's library, torch.compile's kernels):
#: valgrind cannot decode AVX-512, which -march=native emits on such hosts; x86-64-v3 (AVX2,
#: FMA) is what valgrind emulates and what torch's own kernels dispatch to under it.
VALGRIND_MARCH = {"x86_64": "x86-64-v3", "AMD64": "x86-64-v3"}
#: Instruction sets for torch's BLAS (MKL) and oneDNN in the measured process.  Their AVX2
#: kernels crawl under valgrind (measured: a 512³ matmul 6.8 s with MKL's AVX2 kernels,
#: 0.085 s with its SSE4.2 ones; a 64→64 3×3 convolution's forward+backward at 64², 22 s
#: through oneDNN's AVX2 kernels, 0.37 s through its SSE4.1 ones), which made LIP's
#: convolution alone take most of the gate.  Counts stay exact; they are the SSE kernels'.
VALGRIND_BLAS_ISA = {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}
#: Tiers left out unless ``tiers`` names them, and why.  torch.compile's first call per shape
#: traces and compiles in the measured process, where valgrind runs Python ~9x slower: measured
#: here, 36 s of CPU for the first and several seconds for every other specialisation, so the
#: 50 compiled cases alone would overrun the gate's budget several times.  What the tier runs
#: is the vectorized tier's source (counted) through torch's compiler (fixed per baseline key).
UNCOUNTED_TIERS = {
    "compiled": "torch.compile traces and compiles inside the valgrind process (minutes per pooler); "
                "count it explicitly with --tiers compiled",
}


@dataclass(frozen=True)
class InstructionCount:
    """One case's count and its ``avg_pool2d`` count on the same input and pass."""

    case: BenchCase
    instructions: int
    comparator_instructions: int

    @property
    def ratio(self) -> float:
        return self.instructions / self.comparator_instructions

    @property
    def key(self) -> tuple[str, str, int, str]:
        return self.case.key

    @property
    def shape(self) -> tuple[int, ...]:
        return self.case.shape

    @property
    def label(self) -> str:
        case = self.case
        return f"{case.pooler}[{case.tier}] layer{case.layer} {format_shape(case.shape)} {case.pass_}"

    def as_dict(self) -> dict:
        case = self.case
        return {"pooler": case.pooler, "tier": case.tier, "layer": case.layer, "shape": list(case.shape),
                "pass": case.pass_, "instructions": self.instructions,
                "comparator_instructions": self.comparator_instructions, "ratio": self.ratio}

    @classmethod
    def from_dict(cls, data: dict) -> "InstructionCount":
        case = BenchCase(str(data["pooler"]), str(data["tier"]), int(data["layer"]),
                         tuple(int(s) for s in data["shape"]), str(data["pass"]))
        return cls(case, int(data["instructions"]), int(data["comparator_instructions"]))


@dataclass
class InstructionRun:
    """What one valgrind process measured, could not measure (and why), and what it cost."""

    counts: dict[tuple, InstructionCount]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def failures(self) -> list[str]:
        plugin_errors = self.environment.get("plugin_errors") or {}
        return ([f"FAILED {label}: {message}" for label, message in self.errors]
                + [f"FAILED plugin {name} did not import: {error}" for name, error in plugin_errors.items()])


def worker_environment(root: Path, env: dict | None = None) -> dict:
    """The measured process's environment: fixed hashing, fixed malloc thresholds, valgrind-safe -march."""
    process_env = {**SUITE_ENV, **os.environ, **(env or {}), "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    march = VALGRIND_MARCH.get(platform.machine())
    if march:
        process_env.setdefault("POOLBENCH_CPP_MARCH", march)
        process_env.setdefault("TORCHINDUCTOR_CPP_MARCH", march)
        for variable, isa in VALGRIND_BLAS_ISA.items():
            process_env.setdefault(variable, isa)
    # The measured process imports poolbench and impls from the same tree as this one.
    process_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), process_env.get("PYTHONPATH", "")) if p)
    return process_env


def _plan(config: BenchConfig, poolers, tiers, plugins: Sequence[str], result: Path) -> dict:
    asked = split_names(tiers)
    uncounted = {tier: reason for tier in UNCOUNTED_TIERS
                 if (reason := registry.left_out_reason(tier, asked=asked, left_out=UNCOUNTED_TIERS)) is not None}
    return {"poolers": split_names(poolers), "tiers": split_names(tiers), "uncounted": uncounted, "plugins": list(plugins),
            "batch": config.batch,
            "resolution": config.resolution, "threads": config.threads, "seed": config.seed,
            "client_requests": callgrind.client_requests().__file__, "result": str(result)}


def _stream(command: list[str], env: dict, log: Path, echo: bool) -> int:
    """Run ``command``; its stdout is echoed, valgrind's own chatter goes to ``log`` only."""
    with open(log, "w") as stderr:
        return stream(command, env=env, echo=echo, stderr=stderr)[0]


def _collect(result: dict, counts_by_label: dict[str, int]) -> InstructionRun:
    run = InstructionRun({}, environment={k: v for k, v in result.items() if k not in ("cases", "counted")})
    for case in result["cases"]:
        label = f"{case['pooler']}[{case['tier']}] layer{case['layer']} {case['pass']}"
        if case["skip"]:
            run.skipped.append((label, case["skip"]))
        elif case["error"]:
            run.errors.append((label, case["error"]))
        elif case["label"] not in counts_by_label or case["comparator"] not in counts_by_label:
            run.errors.append((label, "callgrind wrote no count for this case"))
        else:
            count = InstructionCount.from_dict({**case, "instructions": counts_by_label[case["label"]],
                                                "comparator_instructions": counts_by_label[case["comparator"]]})
            run.counts[count.key] = count
    return run


def count_instructions(config: BenchConfig = INSTRUCTION_CONFIG, *, poolers=None, tiers=None,
                       plugins: Sequence[str] = (), env: dict | None = None, echo: bool = True) -> InstructionRun:
    """Count every selected case under callgrind in one process; see the module docstring.

    ``plugins`` are modules the measured process imports after the registry's
    own plugins (a pooler outside the tree).  Raises ``RuntimeError`` when
    valgrind is missing or the process dies (with the tail of valgrind's log).
    """
    reason = callgrind.unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot count instructions: {reason}")
    root = Path(__file__).resolve().parents[2]
    start, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="poolbench-instructions-") as tmp:
        tmp = Path(tmp)
        plan_path, result_path, log = tmp / "plan.json", tmp / "result.json", tmp / "valgrind.log"
        plan_path.write_text(json.dumps(_plan(config, poolers, tiers, plugins, result_path)))
        command = callgrind.callgrind_command([sys.executable, "-m", "poolbench.gate.instruction_worker",
                                               str(plan_path)], tmp)
        returncode = _stream(command, worker_environment(root, env), log, echo)
        if returncode != 0 or not result_path.exists():
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
            raise RuntimeError(f"the callgrind process exited with {returncode}; valgrind's log ends:\n{tail}")
        run = _collect(json.loads(result_path.read_text()), callgrind.read_dumps(tmp))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.wall_s = time.perf_counter() - start
    run.cpu_s = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    return run
