"""A run that crashes, is resumed, is raced or is fed bad options never loses or mixes results silently.

Each test names the failure it guards against (found by probing the CLI as a
user would: kill -9 mid-run, torn lines, resumes with other settings, two runs
on one file, unbounded options).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import poolbench
from poolbench import cli
from poolbench.run import results, runner, sweep
from poolbench.run.linefile import read_csv_records, read_jsonl_records, repair_torn_tail
from poolbench.metrics import MetricRow as Row

REPO = Path(__file__).resolve().parents[1]


from results_helpers import env as _env, row as _row, write_cells as _write  # noqa: E402


def test_torn_last_line_is_cut_before_appending_and_skipped_by_readers(tmp_path):
    """Guards against a record glued onto a crash fragment, and every later read failing on it."""
    stem = tmp_path / "run"
    _write(stem, [[_row()], [_row("macs", "macs", 2.0)]])
    jsonl = stem.with_suffix(".jsonl")
    jsonl.write_bytes(jsonl.read_bytes()[:-40])  # a crash in the middle of the last line
    with pytest.warns(UserWarning, match=r"run.jsonl: skipped 1 unreadable line\(s\) \(line 2\)"):
        frame = results.load_results(jsonl)
    assert list(frame["metric"]) == ["params"]
    with pytest.warns(UserWarning, match="dropped a torn last line"):
        _write(stem, [[_row("macs", "macs", 3.0)]], resume=True)
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["metric"] for line in lines)  # every line parses again
    assert set(results.load_results(jsonl)["metric"]) == {"params", "macs"}


def test_repair_torn_tail_keeps_complete_files_untouched(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\n')
    assert repair_torn_tail(path) == 0 and path.read_text() == '{"a": 1}\n{"b": 2}\n'
    path.write_text('{"a": 1}\n{"b"')
    with pytest.warns(UserWarning):
        assert repair_torn_tail(path) == 4
    assert path.read_text() == '{"a": 1}\n'


def test_garbage_lines_are_counted_with_file_and_line(tmp_path):
    """Guards against `poolbench report` failing on one bad line with a position and no file name."""
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnot json\n[1, 2]\n{"b": 2}\n')
    read = read_jsonl_records(path)
    assert [r for r in read.records] == [{"a": 1}, {"b": 2}] and read.bad_lines == [2, 3]
    path.write_text("only garbage\n")
    with pytest.warns(UserWarning, match=r"x.jsonl: skipped 1"), \
            pytest.raises(ValueError, match=r"x.jsonl holds no readable rows \(1 unreadable lines\)"):
        results.load_results(path)


def test_cut_csv_row_is_skipped_not_rendered(tmp_path):
    """Guards against a cut CSV row being read as a short row of partly-empty columns."""
    stem = tmp_path / "run"
    _write(stem, [[_row()], [_row("macs", "macs", 2.0)]])
    csv_path = stem.with_suffix(".csv")
    csv_path.write_bytes(csv_path.read_bytes()[:-25])
    read = read_csv_records(csv_path)
    assert len(read.records) == 1 and read.bad_lines == [3]
    with pytest.warns(UserWarning, match="run.csv: skipped 1"):
        assert list(results.load_results(csv_path)["metric"]) == ["params"]


def test_cell_cut_short_is_not_counted_as_measured(tmp_path):
    """Guards against a cell with only some of its rows written being skipped by --resume."""
    stem = tmp_path / "run"
    _write(stem, [[_row("params", "params"), _row("params", "params_overhead")], [_row("macs", "macs")]])
    jsonl = stem.with_suffix(".jsonl")
    lines = jsonl.read_text().splitlines(keepends=True)
    jsonl.write_text(lines[0] + lines[2])  # the params cell lost its second row
    done = results.measured_cells(stem)
    assert {cell[-1] for cell in done} == {"macs"}
    assert set(results.load_results(jsonl)["metric"]) == {"macs"}


def test_failed_cell_is_retried_and_retry_wins(tmp_path):
    stem = tmp_path / "run"
    _write(stem, [[_row(status="error", value=None)]])
    assert results.measured_cells(stem) == set()
    _write(stem, [[_row(value=5.0)]], resume=True)
    frame = results.load_results(stem)
    assert len(frame) == 1 and frame["value"].iloc[0] == 5.0 and len(results.measured_cells(stem)) == 1


def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    """Guards against rows at batch 2, 64² being appended to a file measured at batch 1, 32²."""
    stem = tmp_path / "run"
    _write(stem, [[_row()]])
    with pytest.raises(ValueError, match=r"batch: 1 in the file, 2 now; resolution: 32 in the file, 64 now"):
        _write(stem, [[_row()]], resume=True, env=_env(batch=2, resolution=64))
    assert len(stem.with_suffix(".jsonl").read_text().splitlines()) == 1  # nothing appended
    _write(stem, [[_row("macs", "macs")]], resume=True)  # same settings: fine (and the lock was released)


def test_second_writer_on_the_same_file_is_refused(tmp_path):
    """Guards against two runs on one results file deleting and mixing each other's rows."""
    stem = tmp_path / "run"
    with results.ResultsWriter(stem, _env()):
        with pytest.raises(ValueError, match=rf"run.jsonl is being written by another poolbench run \(pid {os.getpid()}\)"):
            results.ResultsWriter(stem, _env(), resume=True)
    _write(stem, [[_row()]])  # released on close


def test_lock_of_a_killed_run_is_released_by_the_kernel(tmp_path):
    stem = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from poolbench.run.runlock import RunLock; "
                               f"RunLock({str(stem)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"pid {holder.pid}"):
            results.ResultsWriter(stem, _env())
    finally:
        holder.kill()
        holder.wait()
    _write(stem, [[_row()]])


def test_a_new_run_keeps_the_previous_results_aside(tmp_path):
    """Guards against a run without --resume silently deleting the previous results."""
    stem = tmp_path / "run"
    _write(stem, [[_row(value=1.0)]])
    with pytest.warns(UserWarning, match="previous results were kept as"):
        writer = _write(stem, [[_row(value=2.0)]])
    assert len(writer.moved_aside) == 2 and all(path.exists() for path in writer.moved_aside)
    kept = [p for p in writer.moved_aside if p.suffix == ".jsonl"][0]
    assert results.load_results(kept)["value"].tolist() == [1.0]
    assert results.load_results(stem)["value"].tolist() == [2.0]


@pytest.mark.parametrize("name", ["../../etc/evil", "a/b", "..", ".", "", "x\\y"])
def test_run_name_cannot_leave_the_output_folder(name):
    with pytest.raises(ValueError, match="must be a plain file name"):
        results.check_run_name(name)
    with pytest.raises(ValueError, match="must be a plain file name"):
        runner.RunConfig(models=("vgg16",), poolers=("avg",), name=name)


def test_output_folder_that_is_a_file_fails_before_measuring(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = cli.main(["run", "--models", "vgg16", "--poolers", "avg", "--out", str(blocker), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1
    code = cli.main(["run", "--models", "vgg16", "--poolers", "avg", "--out", "/proc/poolbench/x", "--no-progress"])
    assert code == 2 and "cannot create the results folder /proc/poolbench/x" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--min-run-time", "inf"), ("--min-run-time", "nan"),
                                           ("--min-run-time", "0"), ("--min-run-time", "1e9"),
                                           ("--rounds", "0"), ("--batch", "-1"), ("--resolution", "8"),
                                           ("--threads", "0"), ("--batch", "two")])
def test_numeric_options_are_bounded(option, value, capsys):
    """Guards against `--min-run-time inf` timing forever (and other unbounded options)."""
    assert cli.main(["run", option, value]) == 2
    assert option in capsys.readouterr().err


def test_settings_reject_non_finite_and_huge_values():
    from poolbench.metrics import Settings

    for bad in ({"min_run_time": float("inf")}, {"min_run_time": float("nan")}, {"rounds": 10**6},
                {"warmup": -1}):
        with pytest.raises(ValueError):
            Settings(**bad)


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run", interrupted)
    assert cli.main(["run", "--models", "vgg16", "--poolers", "avg", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err


def test_torchscript_is_refused_with_a_clear_message():
    pool = poolbench.create("dpp_lite_sym", 4, tier="vectorized")
    with pytest.raises(TypeError, match="TorchScript .* is not supported .* use torch.compile"):
        torch.jit.script(pool)


def test_plugin_returning_the_wrong_shape_is_an_error_not_a_measurement():
    class WrongShape(poolbench.Pool2d):
        def pool(self, x):
            return x  # forgot to pool

    with pytest.raises(RuntimeError, match=r"returned shape \(1, 2, 8, 8\) .* must return \(1, 2, 4, 4\)"):
        WrongShape(2, 2, 2)(torch.zeros(1, 2, 8, 8))


def test_bare_module_plugin_returning_the_wrong_shape_is_an_error(isolated_registries):
    """A plugin may register any nn.Module; what ``create`` hands the harness is shape-checked all the same."""
    registry = isolated_registries

    class Identity(torch.nn.Module):  # not a Pool2d: forgets to pool
        def __init__(self, channels, kernel_size=2, stride=2, padding=0):
            super().__init__()

        def forward(self, x):
            return x

    registry.register("bare_identity", "vectorized", params="0", param_count=lambda c, k: 0,
                      macs=lambda g, o: 0)(Identity)
    module = poolbench.create("bare_identity", 2, 3, 2, 1)
    with pytest.raises(RuntimeError, match=r"bare_identity\[vectorized\] returned shape \(1, 2, 7, 7\) .* "
                                           r"must return \(1, 2, 4, 4\)"):
        module(torch.zeros(1, 2, 7, 7))


# ---------------------------------------------------------------------------------------------
# fault injection: SIGKILL at a random moment, tear the last line, resume
# ---------------------------------------------------------------------------------------------
GRID = ["--models", "vgg16", "--poolers", "avg", "--tiers", "vectorized", "--metrics", "params", "macs",
        "latency_forward", "--batch", "1", "--resolution", "32", "--min-run-time", "0.01", "--rounds", "1",
        "--threads", "1", "--no-progress"]


def test_sigkill_torn_line_and_resume_give_every_cell_exactly_once(tmp_path):
    out, name = tmp_path / "out", "fault"
    command = [sys.executable, "-m", "poolbench", "run", *GRID, "--out", str(out), "--name", name]
    jsonl = out / f"{name}.jsonl"
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:  # wait for the first cells to land
        if jsonl.exists() and jsonl.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.5))  # then kill at a random moment
    child.send_signal(signal.SIGKILL)
    child.wait()
    data = jsonl.read_bytes()
    assert data.count(b"\n") >= 1, child.stderr.read().decode()[-2000:]
    jsonl.write_bytes(data[:-min(150, len(data) // 2)])  # a crash in the middle of a write

    with pytest.warns(UserWarning):
        assert cli.main(["run", *GRID, "--out", str(out), "--name", name, "--resume"]) == 0
    frame = results.load_results(jsonl)
    config = runner.RunConfig(models=("vgg16",), poolers=("avg",), tiers=("vectorized",),
                              metrics=("params", "macs", "latency_forward"), batch=1, resolution=32)
    planned = {(g.model, g.pooler, g.tier, g.scope, g.layer, m) for g in runner.plan(config) for m in g.metrics}
    measured = frame.groupby(list(results.CELL_COLUMNS))["attempt"].nunique()
    assert set(measured.index) == planned and (measured == 1).all()
    assert not frame.duplicated(list(results.CELL_COLUMNS) + ["quantity"]).any()
    assert (out / f"{name}.md").exists()


# ---------------------------------------------------------------------------------------------
# checks and gates that checked nothing fail; clear errors at create
# ---------------------------------------------------------------------------------------------
def _baseline_dir(tmp_path, text: str) -> Path:
    from poolbench.gate.baselines import machine_id

    folder = tmp_path / "baselines" / machine_id()
    folder.mkdir(parents=True)
    (folder / "0001_cpu.json").write_text(text)
    return tmp_path / "baselines"


@pytest.mark.parametrize("text, message", [
    ("[]", "not pytest-benchmark JSON"),
    ('{"benchmarks": "x"}', "not pytest-benchmark JSON"),
    ('{"benchmarks": [{"foo": 1}]}', "holds no poolbench benchmark cases"),
    ('{"benchmarks": [', "is not valid JSON"),
    ("", "is empty"),
    ('{"benchmarks": [{"extra_info": {"pooler": "max"}}]}', "is malformed"),
])
def test_compare_fails_on_an_empty_foreign_or_broken_baseline(tmp_path, capsys, text, message):
    """Guards against `poolbench compare` passing ("10 new") when its baseline was emptied or replaced."""
    directory = _baseline_dir(tmp_path, text)
    assert cli.main(["compare", "--baseline-dir", str(directory), "--poolers", "max", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and message in out and "0001_cpu.json" in out and "benchmark gate: FAIL" in out


def test_check_with_unknown_tier_is_a_usage_error(capsys):
    """Guards against `poolbench check --tiers nonexistent` exiting 0 with an empty table."""
    assert cli.main(["check", "--poolers", "max", "--tiers", "nonexistent"]) == 2
    assert "unknown tier(s) 'nonexistent'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuda tier runs on this machine")
def test_check_that_only_skipped_fails(capsys):
    assert cli.main(["check", "--poolers", "dpp_lite_sym", "--tiers", "cuda", "--no-gradcheck"]) == 1
    assert "nothing was checked" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_create_a_gpu_tier_without_cuda_fails_at_create():
    """Guards against create(tier='cuda') returning a module that fails only at its first forward."""
    with pytest.raises(ValueError, match=r"dpp_lite_sym\[cuda\] cannot run on cuda: CUDA is not available"):
        poolbench.create("dpp_lite_sym", 4, tier="cuda")


def test_a_plugin_calling_sys_exit_is_recorded_as_an_error():
    from poolbench import metrics

    class Exits(poolbench.Pool2d):
        def pool(self, x):
            raise SystemExit(3)

    subject = type("S", (), {"device": torch.device("cpu"), "scope": "layer",
                             "row": lambda self, *a: Row("m", "p", "t", "layer", "l", "", *a)})()
    spec = metrics.METRICS["latency_forward"]
    original = spec.function
    try:
        object.__setattr__(spec, "function", lambda s: Exits(2)(torch.zeros(1, 2, 4, 4)))
        rows = metrics.measure(subject, "latency_forward")
    finally:
        object.__setattr__(spec, "function", original)
    assert rows[0].status == "error" and "SystemExit: 3" in rows[0].error


def test_layerbench_unwritable_out_fails_before_measuring(tmp_path, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    start = time.perf_counter()
    assert cli.main(["layerbench", "--out", str(folder), "--layers", "1"]) == 2
    assert "it is a folder" in capsys.readouterr().err and time.perf_counter() - start < 5
    assert cli.main(["layerbench", "--out", "/proc/poolbench/report.md", "--layers", "1"]) == 2
    assert "cannot create the results folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["layerbench", "--min-run-time", "inf"], ["layerbench", "--layers", "0"],
                                  ["compare", "--budget", "inf"], ["compare", "--confirm", "-1"]])
def test_other_commands_bound_their_numeric_options(argv):
    assert cli.main(argv) == 2
