"""Gates that cannot pass on nothing, and baselines that cannot crash or hang them.

Each case here was a way to make ``poolbench compare`` pass having compared
nothing, or end in a traceback or a hang, with a stored baseline a user (or
a careless script) can write: NaN, infinite, zero or string ratios, an
infinite count, a shape that differs, a FIFO, a symlink to ``/dev/zero``,
deep nesting, huge integers.  Every one must now fail with exit 1, one
message naming the file and the command that records a fresh baseline.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from poolbench import gate
from poolbench.cli import main
from poolbench.gate import baseline_file, callgrind, instruction_gate
from poolbench.gate.baselines import machine_id
from poolbench.gate.instruction_baseline import RECORD_COMMAND, baseline_key, baseline_path, save_baseline
from poolbench.gate.instructions import INSTRUCTION_CONFIG, InstructionCount, InstructionRun

REPO = Path(__file__).resolve().parents[1]
TIME_RECORD = "poolbench compare --save-baseline"
needs_valgrind = pytest.mark.skipif(callgrind.unavailable_reason() is not None,
                                    reason=f"{callgrind.unavailable_reason()}")


# --------------------------------------------------------------------------- the time gate


def time_baseline(ratio=2.0) -> dict:
    """A pytest-benchmark document for ``max``'s five forward layers at the default settings."""
    config = gate.BenchConfig()
    benchmarks = []
    for layer, shape in enumerate(config.shapes(), start=1):
        case = gate.BenchCase("max", "vectorized", layer, shape, "forward")
        info = gate.extra_info(case, config, None, {"ratio": ratio, "comparator_median_s": 1e-3, "rounds": 5})
        benchmarks.append({"fullname": f"test_bench_poolers.py::test_pooler[{case.id}]", "extra_info": info,
                           "stats": {"median": 2e-3, "rounds": 5}})
    return {"benchmarks": benchmarks}


def time_baseline_file(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "baselines" / machine_id()
    folder.mkdir(parents=True)
    path = folder / "0001_cpu.json"
    path.write_text(text)
    return path


def compare_cli(tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["compare", "--baseline-dir", str(tmp_path / "baselines"), "--poolers", "max", "--tiers",
                 "vectorized", "--report", str(tmp_path / "r.md"), "--quiet", *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("ratio_text, problem", [
    ("NaN", "non-finite number (NaN)"),  # used to pass: NaN > threshold is False, every case "unchanged"
    ("Infinity", "non-finite number (Infinity)"),  # used to end in "math domain error", exit 2
    ("1e999", "number out of range"),  # json reads it as inf
    ("0", "ratio must be a finite number > 0, got 0"),  # used to be a ZeroDivisionError traceback
    ("-1.5", "ratio must be a finite number > 0, got -1.5"),
    ('"1.5"', "ratio must be a number, got '1.5'"),  # used to be a TypeError
])
def test_time_gate_refuses_a_baseline_with_unusable_ratios(tmp_path, capsys, ratio_text, problem):
    text = json.dumps(time_baseline(), indent=1).replace('"ratio": 2.0', f'"ratio": {ratio_text}', 1)
    path = time_baseline_file(tmp_path, text)
    code, out = compare_cli(tmp_path, capsys)
    assert code == 1, out
    lines = out.strip().splitlines()
    assert lines[-1] == "benchmark gate: FAIL"
    assert str(path) in out and problem in out and TIME_RECORD in out
    assert "Traceback" not in out and "math domain" not in out


@pytest.mark.parametrize("edit, problem", [
    (lambda info: info.update(layer="two"), "layer must be an integer > 0, got 'two'"),
    (lambda info: info.update(layer=True), "layer must be an integer > 0, got True"),
    (lambda info: info.update(shape=[1, "64"]), "a size in shape must be an integer > 0"),
    (lambda info: info.update(pooler=["max"]), "pooler must be a string"),
    (lambda info: info.update(config="cpu"), "config must be an object"),
])
def test_time_gate_refuses_wrongly_typed_fields(tmp_path, capsys, edit, problem):
    document = time_baseline()
    edit(document["benchmarks"][2]["extra_info"])
    path = time_baseline_file(tmp_path, json.dumps(document))
    code, out = compare_cli(tmp_path, capsys)
    assert code == 1 and str(path) in out and problem in out and "Traceback" not in out, out


def test_time_gate_refuses_deep_nesting_and_huge_integers(tmp_path, capsys):
    path = time_baseline_file(tmp_path, '{"benchmarks": ' + "[" * 200_000 + "]" * 200_000 + "}")
    code, out = compare_cli(tmp_path, capsys)
    assert code == 1 and str(path) in out and "holds a value nested 200001 levels deep" in out, out
    path.write_text(json.dumps(time_baseline()).replace('"rounds": 5', '"rounds": ' + "9" * 5000, 1))
    code, out = compare_cli(tmp_path, capsys)
    assert code == 1 and str(path) in out and "integer of 5000 digits" in out, out


def _compare_process(tmp_path: Path) -> subprocess.CompletedProcess:
    """``poolbench compare`` in its own process (a hang there cannot hang the test suite)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    return subprocess.run([sys.executable, "-m", "poolbench", "compare", "--baseline-dir", str(tmp_path / "baselines"),
                           "--poolers", "max", "--report", str(tmp_path / "r.md"), "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="needs FIFOs and /dev/zero")
def test_time_gate_refuses_a_fifo_and_a_symlink_to_dev_zero_without_hanging(tmp_path):
    folder = tmp_path / "baselines" / machine_id()
    folder.mkdir(parents=True)
    os.mkfifo(folder / "0001_cpu.json")  # used to block forever waiting for a writer
    result = _compare_process(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0001_cpu.json is not a regular file" in result.stdout and TIME_RECORD in result.stdout
    (folder / "0002_cpu.json").symlink_to("/dev/zero")  # used to read until memory ran out
    result = _compare_process(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0002_cpu.json is not a regular file" in result.stdout and "Traceback" not in result.stderr


def test_the_loader_caps_the_size_and_accepts_a_symlink_to_a_regular_file(tmp_path):
    real = tmp_path / "real.json"
    real.write_text(json.dumps({"benchmarks": [1.5] * 100}))
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert baseline_file.read_baseline_json(link, "record")["benchmarks"][0] == 1.5
    with pytest.raises(gate.BaselineError, match=rf"{link} is \d+ bytes, more than the 100 a baseline may have.*`record`"):
        baseline_file.read_baseline_json(link, "record", max_bytes=100)
    with pytest.raises(gate.BaselineError, match="not a regular file"):
        baseline_file.read_baseline_json(tmp_path, "record")
    with pytest.raises(gate.BaselineError, match="cannot be read"):
        baseline_file.read_baseline_json(tmp_path / "absent.json", "record")


def test_save_baseline_over_a_refused_one_records_a_fresh_one(tmp_path):
    """The refusal says to record a fresh baseline, so --save-baseline must not be refused by the bad one."""
    time_baseline_file(tmp_path, json.dumps(time_baseline()).replace('"ratio": 2.0', '"ratio": NaN'))
    options = gate.GateOptions(baseline_dir=tmp_path / "baselines", poolers=["max"], save_baseline=True)
    assert gate.load_baseline(options).path is None
    with pytest.raises(gate.BaselineError, match="non-finite number"):
        gate.load_baseline(gate.GateOptions(baseline_dir=tmp_path / "baselines", poolers=["max"]))
    fresh = gate.save_baseline(time_baseline(), tmp_path / "baselines", "cpu")
    assert fresh.name == "0002_cpu.json" and gate.load_baseline(gate.GateOptions(
        baseline_dir=tmp_path / "baselines", poolers=["max"])).path == fresh


@pytest.mark.parametrize("text", ["inf", "Infinity", "1e400", "0", "-1", "nan"])
def test_threshold_must_be_finite_and_positive(tmp_path, capsys, text):
    """``--threshold inf`` used to be accepted: a gate that can never fail."""
    code, out = compare_cli(tmp_path, capsys, "--threshold", text)
    assert code == 2 and "the threshold must be a finite number > 0" in out
    code, out = compare_cli(tmp_path, capsys, "--case-threshold", text)
    assert code == 2 and "the threshold must be a finite number > 0" in out
    with pytest.raises(ValueError, match="threshold must be a finite positive fraction"):
        gate.compare({}, {}, threshold=float(text) if text != "Infinity" else math.inf)


def _cases(ratios: dict) -> dict:
    document = time_baseline()
    for bench in document["benchmarks"]:
        bench["extra_info"]["ratio"] = ratios.get(bench["extra_info"]["layer"], bench["extra_info"]["ratio"])
    return gate.load_benchmarks(document)


def test_unusable_ratios_are_never_compared_and_a_measured_one_fails_its_case():
    baseline, current = _cases({}), _cases({1: math.nan, 2: math.inf, 3: 0.0})
    comparison = gate.compare(baseline, current)
    statuses = {row.key[2]: row.status for row in comparison.rows}
    assert statuses == {1: "unmeasured", 2: "unmeasured", 3: "unmeasured", 4: "unchanged", 5: "unchanged"}
    assert comparison.compared == 2 and all(math.isfinite(g.change) for g in comparison.groups)
    # a NaN in a baseline handed to compare() directly counts as no baseline, never as "unchanged"
    nothing = gate.compare(_cases({n: math.nan for n in range(1, 6)}), baseline)
    assert {row.status for row in nothing.rows} == {"new"} and nothing.compared == 0


# --------------------------------------------------------------------------- the instruction gate

SHAPES = INSTRUCTION_CONFIG.shapes()


def counts(pooler: str, ratio: float = 2.0, shapes=SHAPES) -> dict:
    return {(pooler, "vectorized", layer, "forward"): InstructionCount(
        gate.BenchCase(pooler, "vectorized", layer, shapes[layer - 1], "forward"),
        round(ratio * 1_000_000), 1_000_000) for layer in range(1, 6)}


def fake_run(*groups: dict) -> InstructionRun:
    merged = {k: v for group in groups for k, v in group.items()}
    return InstructionRun(merged, environment={"cpu_capability": "AVX2", "plugin_errors": {}, "torch": "x"})


@pytest.fixture
def counted(monkeypatch):
    """The instruction gate with a stand-in for the valgrind run: ``counted.run`` is what it 'counts'."""
    class Counted:
        run = fake_run(counts("dpp_lite_sym"))

    monkeypatch.setattr(instruction_gate, "count_instructions", lambda *args, **kwargs: Counted.run)
    return Counted


def instruction_cli(tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["compare", "--metric", "instructions", "--baseline-dir", str(tmp_path), "--report",
                 str(tmp_path / "r.md"), "--quiet", *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_instruction_gate_fails_when_no_case_was_compared(tmp_path, capsys, counted):
    """``--poolers max`` against a baseline without max: every case "new"; this used to PASS."""
    save_baseline(fake_run(counts("dpp_lite_sym")), tmp_path, INSTRUCTION_CONFIG)
    counted.run = fake_run(counts("max"))
    code, out = instruction_cli(tmp_path, capsys, "--poolers", "max")
    assert code == 1, out
    assert "the gate checked nothing" in out and "instruction gate: FAIL" in out
    counted.run = fake_run(counts("dpp_lite_sym"))
    code, out = instruction_cli(tmp_path, capsys)
    assert code == 0 and "instruction gate: PASS" in out, out


def test_instruction_judge_fails_on_nothing_compared():
    _, messages = instruction_gate.judge(counts("dpp_lite_sym"), fake_run(counts("max")),
                                         selected=lambda key: key[0] == "max")
    assert len(messages) == 1 and "checked nothing" in messages[0]


@pytest.mark.parametrize("edit, problem", [
    (lambda case: case.update(instructions=math.inf), "non-finite number (Infinity)"),  # was an OverflowError
    (lambda case: case.update(instructions=1.5e6), "instructions must be an integer > 0, got 1500000.0"),
    (lambda case: case.update(comparator_instructions=0), "comparator_instructions must be an integer > 0"),
    (lambda case: case.update(instructions="12"), "instructions must be an integer > 0, got '12'"),
    (lambda case: case.update(layer=None), "layer must be an integer > 0, got None"),
    (lambda case: case.update(shape="1x64"), "shape must be a list of sizes"),
])
def test_instruction_gate_refuses_a_crafted_count(tmp_path, capsys, counted, edit, problem):
    path = save_baseline(fake_run(counts("dpp_lite_sym")), tmp_path, INSTRUCTION_CONFIG)
    document = json.loads(path.read_text())
    edit(document["cases"][1])
    path.write_text(json.dumps(document))
    code, out = instruction_cli(tmp_path, capsys)
    assert code == 1, out
    assert str(path) in out and problem in out and RECORD_COMMAND in out and "Traceback" not in out


def test_instruction_gate_shape_mismatch_fails_with_exit_1(tmp_path, capsys, counted):
    """A baseline counted at other shapes cannot be compared: exit 1 naming the file (it used to exit 2)."""
    other = [(1, c, s * 2, s * 2) for (_, c, s, _) in SHAPES]
    save_baseline(fake_run(counts("dpp_lite_sym", shapes=other)), tmp_path, INSTRUCTION_CONFIG)
    code, out = instruction_cli(tmp_path, capsys)
    assert code == 1, out
    assert "the baseline measured shape 1x64x128x128" in out and str(baseline_path(tmp_path, baseline_key("AVX2"))) in out
    assert RECORD_COMMAND in out


def test_instruction_gate_refuses_a_fifo_baseline(tmp_path, capsys, counted):
    path = baseline_path(tmp_path, baseline_key("AVX2"))
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    code, out = instruction_cli(tmp_path, capsys)
    assert code == 1 and f"{path} is not a regular file" in out, out


def test_instruction_save_replaces_a_fifo_or_broken_file_instead_of_blocking(tmp_path, capsys, counted):
    path = baseline_path(tmp_path, baseline_key("AVX2"))
    path.parent.mkdir(parents=True)
    os.mkfifo(path)  # a plain write would wait for a reader forever
    code, out = instruction_cli(tmp_path, capsys, "--save-baseline")
    assert code == 0 and path.is_file() and "baseline saved:" in out, out
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    path.write_text('{"kind": "poolbench instruction counts", "version": 1, "cases": "garbage"}')
    code, out = instruction_cli(tmp_path, capsys, "--save-baseline", "--poolers", "dpp_lite_sym")
    assert code == 0 and len(json.loads(path.read_text())["cases"]) == 5, out


@pytest.mark.slow
@needs_valgrind
def test_instruction_gate_fails_on_nothing_compared_with_real_counts(tmp_path, capsys):
    """A real valgrind run (max, 10 cases) against a baseline without max: ``--poolers max`` cannot pass.

    The baseline holds only dpp_lite_sym, written for each CPU capability a
    valgrind process can report, so whichever one this run measures under
    has its baseline and the gate gets as far as comparing.
    """
    for capability in ("DEFAULT", "AVX2", "AVX512", "VSX", "ZVECTOR", "SVE256"):
        save_baseline(InstructionRun(counts("dpp_lite_sym"), environment={"cpu_capability": capability}),
                      tmp_path, INSTRUCTION_CONFIG)
    code, out = instruction_cli(tmp_path, capsys, "--poolers", "max", "--tiers", "vectorized")
    assert code == 1, out
    assert "FAILED no case of this run could be compared" in out and "instruction gate: FAIL" in out
    report = (tmp_path / "r.md").read_text()
    assert report.startswith("# Instruction-count gate: FAIL") and "10 new" in report
    cases = json.loads((tmp_path / "r.json").read_text())["cases"]
    assert len(cases) == 10 and all(case["pooler"] == "max" and case["instructions"] > 0 for case in cases)
