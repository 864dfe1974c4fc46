"""Tests of the instruction-count gate (``poolbench compare --metric instructions``).

The decisions — thresholds, vanished and new cases, which baseline file may
be used — are tested on synthetic counts (exact and instant).  Valgrind runs
twice in the default suite, concurrently, on one small pooler, to show the
property the gate rests on: two processes count exactly the same.  The
end-to-end runs (record, pass unchanged, fail on one extra ``avg_pool2d``
call) are slow and marked so.
"""
from __future__ import annotations

import json
import re
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from poolbench.cli import main
from poolbench.gate import BenchCase, callgrind
from poolbench.gate.instruction_baseline import (RECORD_COMMAND, BaselineError, baseline_key, baseline_path,
                                                 load_baseline, save_baseline)
from poolbench.gate.instruction_gate import InstructionGateOptions, judge, run_instruction_gate
from poolbench.gate.instructions import INSTRUCTION_CONFIG, InstructionCount, InstructionRun, count_instructions

SHAPES = INSTRUCTION_CONFIG.shapes()
COMPARATOR_COUNT = 1_000_000
needs_valgrind = pytest.mark.skipif(callgrind.unavailable_reason() is not None,
                                    reason=f"{callgrind.unavailable_reason()}")


def counts(pooler="dpp_lite_sym", tier="vectorized", pass_="forward", ratios=(5.0, 5.5, 6.0, 6.5, 7.0)):
    """Synthetic counts: ``ratios[i]`` × the comparator's count at layer i+1."""
    return {(pooler, tier, layer, pass_): InstructionCount(BenchCase(pooler, tier, layer, SHAPES[layer - 1], pass_),
                                                           round(ratio * COMPARATOR_COUNT), COMPARATOR_COUNT)
            for layer, ratio in enumerate(ratios, start=1)}


def grown(base: dict, factor: float) -> dict:
    """``base`` with every pooler count multiplied by ``factor`` (the comparator's unchanged)."""
    return {k: InstructionCount(c.case, round(c.instructions * factor), c.comparator_instructions)
            for k, c in base.items()}


def run_of(*groups: dict, capability="AVX2", **fields) -> InstructionRun:
    merged = {k: v for group in groups for k, v in group.items()}
    return InstructionRun(merged, environment={"cpu_capability": capability, "plugin_errors": {}}, **fields)


# --------------------------------------------------------------------------- decisions


def test_unchanged_counts_pass():
    base = {**counts(), **counts("max", pass_="forward_backward", ratios=(0.6,) * 5)}
    comparison, messages = judge(base, run_of(base))
    assert messages == []
    assert {row.status for row in comparison.rows} == {"unchanged"} and len(comparison.groups) == 2


def test_group_growing_over_3_percent_fails_naming_pooler_tier_pass_and_ratios():
    base = counts()
    _, messages = judge(base, run_of(grown(base, 1.04)))
    assert len(messages) == 1
    assert messages[0].startswith("REGRESSION dpp_lite_sym[vectorized] forward: instruction ratio to avg_pool2d up +4.0%")
    assert "layer1 5.000x -> 5.200x (+4.0%)" in messages[0]
    # 2% is inside the threshold
    assert judge(base, run_of(grown(base, 1.02)))[1] == []


def test_one_layer_over_10_percent_fails_on_its_own():
    base = counts()
    current = counts(ratios=(5.0, 5.5, 6.0 * 1.12, 6.5, 7.0))  # geometric mean +2.3%: only the layer fails
    _, messages = judge(base, run_of(current))
    assert messages == ["REGRESSION dpp_lite_sym[vectorized] layer3 1x256x16x16 forward: instruction ratio to "
                        "avg_pool2d 6.000x -> 6.720x (+12.0%; single-layer threshold +10%)"]


def test_vanished_case_fails_new_case_passes():
    base = {**counts(), **counts("max")}
    current = {**counts(), **counts("mypool")}
    comparison, messages = judge(base, run_of(current))
    assert [m.split(":")[0] for m in messages] == [f"VANISHED max[vectorized] layer{n} 1x{c}x{s}x{s} forward"
                                                   for n, (_, c, s, _) in enumerate(SHAPES, start=1)]
    assert {row.key[0] for row in comparison.by_status("new")} == {"mypool"}


def test_case_that_crashed_fails_once_not_also_as_vanished():
    base = counts()
    current = dict(base)
    del current[("dpp_lite_sym", "vectorized", 2, "forward")]
    run = run_of(current, errors=[("dpp_lite_sym[vectorized] layer2 forward", "RuntimeError: boom")])
    _, messages = judge(base, run)
    assert messages == ["FAILED dpp_lite_sym[vectorized] layer2 forward: RuntimeError: boom"]


def test_selection_ignores_baseline_cases_outside_it():
    base = {**counts(), **counts("max")}
    _, messages = judge(base, run_of(counts()), selected=lambda key: key[0] == "dpp_lite_sym")
    assert messages == []


# --------------------------------------------------------------------------- baseline files


def test_baseline_round_trip_and_partial_refresh(tmp_path):
    path = save_baseline(run_of(counts(), counts("max")), tmp_path, INSTRUCTION_CONFIG)
    key = baseline_key("AVX2")
    assert path == baseline_path(tmp_path, key) and path.parent.name == "instructions"
    assert load_baseline(path, key, INSTRUCTION_CONFIG) == {**counts(), **counts("max")}
    # refreshing only max keeps dpp_lite_sym's stored counts
    save_baseline(run_of(counts("max", ratios=(2.0,) * 5)), tmp_path, INSTRUCTION_CONFIG,
                  keep=lambda k: k[0] != "max")
    stored = load_baseline(path, key, INSTRUCTION_CONFIG)
    assert stored[("dpp_lite_sym", "vectorized", 1, "forward")].ratio == 5.0
    assert stored[("max", "vectorized", 1, "forward")].ratio == 2.0


def test_missing_baseline_fails_with_the_record_command(tmp_path):
    with pytest.raises(BaselineError, match="no instruction baseline .*" + RECORD_COMMAND.replace(" ", r"\s")):
        load_baseline(baseline_path(tmp_path, baseline_key("AVX2")), baseline_key("AVX2"), INSTRUCTION_CONFIG)


def test_foreign_baseline_fails_naming_the_file(tmp_path):
    path = save_baseline(run_of(counts()), tmp_path, INSTRUCTION_CONFIG)
    foreign = path.with_name("copied.json")
    document = json.loads(path.read_text())
    document["key"]["torch"] = "1.13.0"
    foreign.write_text(json.dumps(document))
    with pytest.raises(BaselineError, match=f"{re.escape(str(foreign))} was recorded for key .*1.13.0"):
        load_baseline(foreign, baseline_key("AVX2"), INSTRUCTION_CONFIG)
    with pytest.raises(BaselineError, match="recorded for key"):  # another CPU capability is foreign too
        load_baseline(path, baseline_key("AVX512"), INSTRUCTION_CONFIG)


@pytest.mark.parametrize("text, problem", [
    ("", "is empty"),  # the wording of the loader both gates share
    ("{not json", "is not valid JSON"),
    ('{"benchmarks": []}', "is not a poolbench instruction baseline"),  # a time (pytest-benchmark) baseline
    ('[1, 2]', "is not a poolbench instruction baseline"),
])
def test_garbage_baseline_fails_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(BaselineError, match=f"{re.escape(str(path))} .*{problem}"):
        load_baseline(path, baseline_key("AVX2"), INSTRUCTION_CONFIG)


def test_baseline_without_counts_is_refused(tmp_path):
    path = save_baseline(run_of(counts()), tmp_path, INSTRUCTION_CONFIG)
    document = json.loads(path.read_text())
    document["cases"] = []
    path.write_text(json.dumps(document))
    with pytest.raises(BaselineError, match=f"{re.escape(str(path))} holds no usable counts"):
        load_baseline(path, baseline_key("AVX2"), INSTRUCTION_CONFIG)


def test_cli_without_a_baseline_fails_before_counting(tmp_path, capsys):
    assert main(["compare", "--metric", "instructions", "--baseline-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "no instruction baseline for this machine and torch version" in out and RECORD_COMMAND in out


def test_unknown_pooler_is_rejected_before_counting():
    with pytest.raises(ValueError, match="unknown pooler 'nope'"):
        run_instruction_gate(InstructionGateOptions(poolers=["nope"], save_baseline=True))


# --------------------------------------------------------------------------- callgrind


def test_read_dumps_maps_labels_to_totals(tmp_path):
    header = "version: 1\ncreator: callgrind-3.19.0\npid: 1\ncmd: python\npart: {part}\n\n"
    (tmp_path / f"{callgrind.DUMP_PREFIX}.1").write_text(
        header.format(part=1) + "desc: Trigger: Client Request: max-vectorized-layer1-forward\n"
        "events: Ir\nsummary: 1234\n\nfn=(1) f\n0 1234\n\ntotals: 1234\n")
    (tmp_path / f"{callgrind.DUMP_PREFIX}.2").write_text(
        header.format(part=2) + "desc: Trigger: Client Request: avg_pool2d-layer1-forward\nevents: Ir\ntotals: 999\n")
    (tmp_path / callgrind.DUMP_PREFIX).write_text(header.format(part=3) + "desc: Trigger: Program termination\n"
                                                  "events: Ir\ntotals: 0\n")
    assert callgrind.read_dumps(tmp_path) == {"max-vectorized-layer1-forward": 1234, "avg_pool2d-layer1-forward": 999}
    (tmp_path / f"{callgrind.DUMP_PREFIX}.3").write_text(
        header.format(part=4) + "desc: Trigger: Client Request: avg_pool2d-layer1-forward\ntotals: 5\n")
    with pytest.raises(ValueError, match="appears twice"):
        callgrind.read_dumps(tmp_path)


def test_cpp_tier_march_can_be_overridden_for_valgrind(monkeypatch):
    from poolbench.impls.dpp_ext import build

    monkeypatch.setenv("POOLBENCH_CPP_MARCH", "x86-64-v3")
    if any(flag.startswith("-march") for flag in build.cpu_flags()):
        assert "-march=x86-64-v3" in build.cpu_flags() and "marchx86-64-v3" in build.build_directory("cpu").name
    monkeypatch.delenv("POOLBENCH_CPP_MARCH")
    assert "-march=x86-64-v3" not in build.cpu_flags()


@needs_valgrind
def test_counts_identical_across_two_processes():
    """The gate's premise: two unchanged processes count exactly the same (one small pooler, run concurrently)."""
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: count_instructions(poolers=["max"], tiers=["vectorized"], echo=False),
                                 range(2))
    assert not first.errors and len(first.counts) == 10
    assert {k: c.instructions for k, c in first.counts.items()} == {k: c.instructions for k, c in second.counts.items()}
    assert {k: c.comparator_instructions for k, c in first.counts.items()} == \
        {k: c.comparator_instructions for k, c in second.counts.items()}


# --------------------------------------------------------------------------- end to end (slow)

PLUGIN = textwrap.dedent('''
    """Test-only poolers: with IGATE_PROBE_EXTRA=1, igate_probe calls avg_pool2d once more."""
    import os
    import torch.nn.functional as F
    from poolbench.base import Pool2d
    from poolbench.registry import register

    EXTRA = os.environ.get("IGATE_PROBE_EXTRA") == "1"

    class Probe(Pool2d):
        def __init__(self, channels, kernel_size=2, stride=2, padding=0, extra=False):
            super().__init__(channels, kernel_size, stride, padding)
            self.extra = extra

        def pool(self, x):
            y = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)
            if self.extra:
                y = y + 0 * F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)
            return y

    register("igate_probe", "vectorized")(lambda c, k, s, p: Probe(c, k, s, p, extra=EXTRA))
    register("igate_twin", "vectorized")(lambda c, k, s, p: Probe(c, k, s, p))
''')


@pytest.mark.slow
@needs_valgrind
def test_gate_end_to_end(tmp_path):
    """Record, pass unchanged, fail naming the pooler that calls avg_pool2d once more (3 valgrind runs)."""
    (tmp_path / "igate_probe_plugin.py").write_text(PLUGIN)

    def run(extra: bool, **options):
        return run_instruction_gate(InstructionGateOptions(
            poolers=["igate_probe", "igate_twin"], baseline_dir=tmp_path / "baselines", report=tmp_path / "r.md",
            plugins=["igate_probe_plugin"], echo=False,
            env={"PYTHONPATH": str(tmp_path), "IGATE_PROBE_EXTRA": "1" if extra else "0"}, **options))

    saved = run(False, save_baseline=True)
    assert saved.passed and saved.saved_path.is_file(), saved.messages
    unchanged = run(False)
    assert unchanged.passed, unchanged.messages
    # Not always bit-identical between processes with different histories (here the first run
    # wrote the plugin's .pyc); the gate's thresholds rest on staying far inside 0.5%.
    assert max(abs(row.change) for row in unchanged.comparison.rows) < 0.005
    slower = run(True)
    assert not slower.passed
    assert any(m.startswith("REGRESSION igate_probe[vectorized] forward: instruction ratio to avg_pool2d up")
               for m in slower.messages), slower.messages
    assert not any("igate_twin" in m for m in slower.messages)
    assert "Instruction-count gate: FAIL" in slower.report_path.read_text()


def test_measured_process_caps_blas_isa_but_keeps_a_users_choice(monkeypatch, tmp_path):
    """MKL's and oneDNN's AVX2 kernels crawl under valgrind; the worker asks for their SSE kernels unless told."""
    import platform

    from poolbench.gate.instructions import VALGRIND_BLAS_ISA, worker_environment

    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    env = worker_environment(tmp_path)
    if platform.machine() not in ("x86_64", "AMD64"):
        assert "MKL_ENABLE_INSTRUCTIONS" not in env
        return
    assert env["MKL_ENABLE_INSTRUCTIONS"] == VALGRIND_BLAS_ISA["MKL_ENABLE_INSTRUCTIONS"] == "SSE4_2"
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["PYTHONPATH"].split(":")[0] == str(tmp_path) and env["OMP_NUM_THREADS"] == "1"
