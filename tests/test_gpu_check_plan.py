"""``PLAN=1 bash scripts/gpu_check.sh``: the GPU check's cost, counted on the CPU with stand-ins for the GPU work."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
PLAN = ROOT / "scripts" / "gpu_plan.py"

#: Every step of the check, in order (the most valuable measurements first).
STEPS = [
    "environment", "build cpu + cuda libraries",
    "layerbench cuda float32", "layerbench triton float32", "layerbench cuda bfloat16", "layerbench triton bfloat16",
    "vgg16 train step", "check cuda", "check triton", "check compiled", "pytest gpu cuda", "pytest gpu triton",
]


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, **extra}
    env.pop("TRITON_INTERPRET", None)
    return env


def test_script_parses_and_defaults_to_python3_with_sigint_and_a_grace_period():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    text = SCRIPT.read_text()
    assert 'PY="${PYTHON:-python3}"' in text
    assert 'timeout -s INT -k "$GRACE_S"' in text and 'GRACE_S="${GRACE_S:-10}"' in text
    assert "export TORCH_CUDA_ARCH_LIST=" in text and "compute_cap" in text
    assert "export POOLBENCH_TRITON_AUTOTUNE=0" in text


def _plan_step(tmp_path, code: str, **env) -> dict:
    result = subprocess.run([sys.executable, str(PLAN), "--step", "probe", "--out", str(tmp_path), "--", "-c", code],
                            cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "plan_steps.jsonl").read_text().splitlines()[-1])


TRITON_PROBE = """
import torch, poolbench
module = poolbench.create("dpp_lite_sym", 64, 2, 2, 0, tier="triton")
for shape in [(2, 64, 32, 32), (2, 64, 32, 32), (2, 64, 16, 16)]:
    y = module(torch.rand(shape, requires_grad=True))
    y.sum().backward()
"""


def test_triton_stand_ins_count_one_compile_per_kernel_and_shape_without_autotuning(tmp_path):
    pytest.importorskip("triton")
    counts = _plan_step(tmp_path, TRITON_PROBE, POOLBENCH_TRITON_AUTOTUNE="0")
    assert counts["triton_launches"] >= 6  # forward + backward, three calls
    # a repeated shape compiles nothing new; a new shape compiles its kernels again
    per_shape = counts["triton_compiles"] / 2
    assert counts["triton_compiles"] >= 2 and per_shape == int(per_shape)
    assert counts["triton_launches"] > counts["triton_compiles"]
    # the keys persist across steps (Triton's disk cache): the same work again compiles nothing
    again = _plan_step(tmp_path, TRITON_PROBE, POOLBENCH_TRITON_AUTOTUNE="0")
    assert again["triton_compiles"] == 0 and again["triton_launches"] == counts["triton_launches"]


def test_compile_stand_in_counts_specialisations(tmp_path):
    code = """
import torch
f = torch.compile(lambda x: x * 2, dynamic=False)
f(torch.ones(2)); f(torch.ones(2)); f(torch.ones(3)); f(torch.ones(3, dtype=torch.float64))
"""
    assert _plan_step(tmp_path, code)["compile_specialisations"] == 3


@pytest.mark.slow
def test_plan_lists_every_step_and_meets_the_goals(tmp_path):
    """The whole check on the CPU (a few minutes on 2 cores): plan.tsv's header, every step, the goals."""
    pytest.importorskip("triton")
    extra = {}
    if "POOLBENCH_TRITON_AUTOTUNE" not in (ROOT / "impls" / "dpp_triton_kernels.py").read_text():
        # kernels that do not read the variable yet would autotune in every step (28 compiles per dtype at
        # VGG-16's shapes): count them as they will be, one config each, and say so in plan.md
        extra["PLAN_ASSUME_ONE_CONFIG"] = "1"
    result = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=_env(PLAN="1", OUT=str(tmp_path), **extra),
                            capture_output=True, text=True, timeout=1800)
    plan = tmp_path / "plan.tsv"
    assert plan.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    lines = plan.read_text().splitlines()
    assert lines[0] == "step\tlimit_s\ttriton_compiles\tcompile_specialisations"
    rows = list(csv.DictReader(lines, delimiter="\t"))
    assert [row["step"] for row in rows] == STEPS
    assert sum(int(row["triton_compiles"]) for row in rows) <= 60
    assert sum(int(row["compile_specialisations"]) for row in rows) <= 8
    assert sum(int(row["limit_s"]) for row in rows) <= 360
    predicted = list(csv.DictReader((tmp_path / "plan_predicted.tsv").read_text().splitlines(), delimiter="\t"))
    assert [row["step"] for row in predicted] == STEPS
    for row in predicted:
        assert float(row["predicted_s"]) <= 0.6 * int(row["limit_s"]), row
    # the stand-ins really ran the Triton steps (a plan that counted nothing would pass the goals)
    by_step = {row["step"]: int(row["triton_compiles"]) for row in rows}
    assert by_step["layerbench triton float32"] > 0 and by_step["layerbench triton bfloat16"] > 0
    assert result.returncode == 0, (tmp_path / "plan.md").read_text()


def test_check_cases_limits_the_standard_cases(capsys):
    """``poolbench check --cases N``: the GPU check's short steps compile kernels for the first N cases only."""
    from poolbench import cli
    from poolbench.verify.check import CASES

    assert cli.main(["check", "--poolers", "dpp_lite_sym", "--tiers", "vectorized", "--no-gradcheck", "--cases", "2",
                     "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert {r["case"] for r in results if r["check"] == "equivalence"} == {str(CASES[0]), str(CASES[1])}
    assert cli.main(["check", "--cases", "0"]) == 2
