"""`poolbench run` under torchrun (CPU, two ranks) and one report over several results files.

The grid is the plugin-contract test's two-pool network at 32², three
poolers, parameters and forward latency: every rank's process still imports
torch and poolbench, so one launch takes ~15-20 s on two shared cores.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from poolbench import cli, models, report
from poolbench.run import distributed, runner, shards, sweep
from poolbench.metrics import BASELINE_POOLER, Settings
from poolbench.run.results import CELL_COLUMNS

from test_plugin_contract import NETWORK_FILE

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = Path(__file__).with_name("poolbench_tinynet.py")
MODEL, POOLERS = "plugin_tinynet", ("avg", "dpp_lite_sym", "softpool")
GRID = ["--models", MODEL, "--poolers", *POOLERS, "--tiers", "fastest", "--metrics", "params", "latency_forward",
        "--batch", "1", "--resolution", "32", "--threads", "1", "--min-run-time", "0.005", "--rounds", "1",
        "--no-progress"]
#: Columns that say when, where and how fast, not what: they differ between any two runs.
VOLATILE = {"value", "detail", "seconds", "timestamp", "load_avg", "attempt", "host", "rank", "cell_rows"}


def _torchrun(out: Path, name: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(LAUNCHER), "run", *GRID, "--out", str(out), "--name", name, *extra]
    environ = {key: value for key, value in os.environ.items() if key != distributed.FAULT_VARIABLE}
    environ.update({"PYTHONPATH": f"{ROOT}{os.pathsep}{LAUNCHER.parent}", **(env or {})})
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=240)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _comparable(records: list[dict]) -> set[tuple]:
    """What a row says about its cell: the timing-free columns, and the value of every non-latency quantity."""
    rows = set()
    for record in records:
        timed = record["metric"].startswith("latency")
        rows.add(tuple(sorted((key, str(value)) for key, value in record.items()
                              if key not in VOLATILE or (key == "value" and not timed))))
    return rows


def _cells(records: list[dict]) -> list[tuple]:
    return [tuple(str(record[column]) for column in CELL_COLUMNS) + (record["quantity"],) for record in records]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same grid in one process (in-process: the tiny network registered as its plugin file does)."""
    out = tmp_path_factory.mktemp("single")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "MODELS", dict(models.MODELS))
        exec(textwrap.dedent(NETWORK_FILE), {})
        config = runner.RunConfig(models=(MODEL,), poolers=POOLERS, tiers=("fastest",),
                                  metrics=("params", "latency_forward"), batch=1, resolution=32, threads=1,
                                  settings=Settings(min_run_time=0.005), out=out, name="single")
        result = sweep.run(config, progress=False, report=False)
    return _records(result.results)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun") / "created" / "by-the-run"  # --out need not exist yet
    return out, _torchrun(out, "grid")


def test_torchrun_measures_every_cell_once_and_the_rows_of_one_process(single, launched):
    out, process = launched
    assert process.returncode == 0, process.stderr[-3000:]
    merged = _records(out / "grid.jsonl")
    assert len(_cells(merged)) == len(set(_cells(merged)))  # every cell (and quantity) exactly once
    assert _comparable(merged) == _comparable(single)
    assert (out / "grid.md").exists() and "Cells not measured" not in (out / "grid.md").read_text()


def test_torchrun_creates_the_out_folder(launched):
    """Guards against "cannot write results to DIR: No such file or directory" from a fresh --out."""
    out, process = launched
    assert process.returncode == 0, process.stderr[-3000:]
    assert out.is_dir() and (out / "grid.jsonl").stat().st_size > 0


@pytest.mark.parametrize("told, difference", [
    ({"batch": 2}, "batch: 1 on rank 0, 2 on rank 1"),
    ({"poolers": ["avg"]}, "--poolers: avg,dpp_lite_sym,softpool on rank 0, avg on rank 1"),
])
def test_ranks_launched_with_other_settings_measure_nothing_and_name_the_difference(tmp_path, told, difference):
    """Guards against a rank with another --batch (or --poolers) merging silently into rank 0's report."""
    process = _torchrun(tmp_path, "grid", env={distributed.SETTINGS_VARIABLE: json.dumps({"rank": 1, **told})})
    assert process.returncode != 0
    message = f"rank 1 was launched with other settings than rank 0 ({difference}"
    refusals = [line for line in process.stderr.splitlines() if message in line]
    assert len(refusals) == 2, process.stderr[-3000:]  # both ranks say it, in one line each
    assert all(line.startswith("poolbench run: error: ") and "launch every rank with the same" in line
               for line in refusals)
    assert "poolbench/run/" not in process.stderr  # torchrun's own traceback only, none from poolbench's code
    assert not list(tmp_path.glob("grid*.jsonl")) or all(path.stat().st_size == 0 for path in tmp_path.glob("grid*.jsonl"))


def test_a_running_sweep_refuses_a_single_process_resume_on_its_name(tmp_path):
    """Guards against a single-process --resume re-measuring cells under a running sweep (its merge then failed)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(LAUNCHER), "run", *GRID, "--out", str(tmp_path), "--name", "grid", "--rank-timeout", "30"]
    environ = {key: value for key, value in os.environ.items() if key != distributed.FAULT_VARIABLE}
    # rank 1 dies holding its first unit, so rank 0 finishes and then waits 30 s for it: the sweep is running
    environ.update({"PYTHONPATH": f"{ROOT}{os.pathsep}{LAUNCHER.parent}", distributed.FAULT_VARIABLE: "1:0:0"})
    sweep_process = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
    try:
        lock, deadline = tmp_path / "grid.lock", time.monotonic() + 120
        while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.1)
        assert lock.exists(), "the sweep's rank 0 never took the stem's lock"
        single = subprocess.run([sys.executable, str(LAUNCHER), "run", *GRID, "--out", str(tmp_path), "--name",
                                 "grid", "--resume"], cwd=ROOT, env={**environ, distributed.FAULT_VARIABLE: ""},
                                capture_output=True, text=True, timeout=240)
        assert sweep_process.poll() is None, "the sweep ended before the resume was tried: the test proves nothing"
    finally:
        _, sweep_err = sweep_process.communicate(timeout=240)
    assert single.returncode == 2, single.stderr[-2000:]
    assert "grid.jsonl is being written by another poolbench run" in single.stderr
    assert "did not finish" in sweep_err and "cannot merge" not in sweep_err  # the sweep's merge went through
    assert not list(tmp_path.glob("grid.jsonl.*")) and (tmp_path / "grid.jsonl").stat().st_size > 0


def test_each_rank_writes_its_own_shard_with_its_own_baseline(launched):
    out, process = launched
    assert process.returncode == 0, process.stderr[-3000:]
    for shard in shards.shard_stems(out / "grid"):
        rows = _records(shard.with_name(shard.name + ".jsonl"))
        rank = int(shard.name.rsplit("rank", 1)[1])
        assert {row["rank"] for row in rows} == {rank} and all(row["host"] and row["device_name"] for row in rows)
        if any(row["pooler"] != BASELINE_POOLER for row in rows):  # it measured a pooler: it has the baseline
            assert any(row["pooler"] == BASELINE_POOLER and row["scope"] == "network" for row in rows)


def test_a_rank_that_dies_holding_work_is_listed_and_resume_measures_exactly_that(single, tmp_path):
    # rank 1 claims its first unit and exits without measuring it; rank 0 waits 2 s for it, then merges
    died = _torchrun(tmp_path, "grid", "--rank-timeout", "2", env={distributed.FAULT_VARIABLE: "1:0:0"})
    assert died.returncode != 0
    assert "rank(s) 1 did not finish" in died.stderr and "--resume" in died.stderr
    assert "not measured: plugin_tinynet" in died.stderr
    before = _records(tmp_path / "grid.jsonl")
    missing = set(map(tuple, (cell[:6] for cell in _cells(single)))) - set(cell[:6] for cell in _cells(before))
    assert missing and {cell[1] for cell in missing} <= set(POOLERS)  # one pooler's cells, no baseline
    report = (tmp_path / "grid.md").read_text()
    assert f"{len(missing)} cell(s) of the grid have no result" in report

    shard_rows = {s: len(_records(s.with_name(s.name + ".jsonl"))) for s in shards.shard_stems(tmp_path / "grid")}
    resumed = _torchrun(tmp_path, "grid", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    merged = _records(tmp_path / "grid.jsonl")
    assert len(_cells(merged)) == len(set(_cells(merged))) and _comparable(merged) == _comparable(single)
    measured_again = set()
    for shard in shards.shard_stems(tmp_path / "grid"):
        new = _records(shard.with_name(shard.name + ".jsonl"))[shard_rows.get(shard, 0):]
        measured_again |= {tuple(str(r[c]) for c in CELL_COLUMNS) for r in new if r["pooler"] != BASELINE_POOLER}
    assert measured_again == missing  # exactly the missing pooler cells (a rank may add its own baseline)


def test_one_process_resume_merges_the_shards_first(single, launched, tmp_path):
    out, process = launched
    assert process.returncode == 0, process.stderr[-3000:]
    for path in out.glob("grid.rank*.jsonl"):
        shutil.copy(path, tmp_path / path.name)  # the shards alone: as if rank 0 died before merging
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "MODELS", dict(models.MODELS))
        exec(textwrap.dedent(NETWORK_FILE), {})
        config = runner.RunConfig(models=(MODEL,), poolers=POOLERS, tiers=("fastest",),
                                  metrics=("params", "latency_forward"), batch=1, resolution=32, threads=1,
                                  settings=Settings(min_run_time=0.005), out=tmp_path, name="grid", resume=True)
        result = sweep.run(config, progress=False, report=False)
    assert result.rows == 0  # nothing left to measure
    assert _comparable(_records(result.results)) == _comparable(single)


# ----------------------------------------------------------------------------------------------
# the parts, in-process
# ----------------------------------------------------------------------------------------------

def test_launch_is_read_from_torchruns_environment():
    assert distributed.detect({}) is None  # a plain process runs exactly as before
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h",
           "MASTER_PORT": "29500"}
    assert distributed.detect(env) == distributed.Launch(3, 4, 1, 2)
    with pytest.raises(ValueError, match="inconsistent"):
        distributed.detect({**env, "RANK": "4"})
    with pytest.raises(ValueError, match="must be integers"):
        distributed.detect({**env, "WORLD_SIZE": "four"})


def test_cpu_ranks_share_the_cores():
    assert distributed.cpu_threads(16, 4) == 4
    assert distributed.cpu_threads(2, 4) == 1  # never zero


def test_units_are_ordered_costliest_first():
    config = runner.RunConfig(models=("resnet50", "vgg16"), poolers=("avg", "dpp_lite_sym"), tiers=("fastest",),
                              resolution=32, batch=1)
    from poolbench.run.rank import units

    order = [(unit.model, unit.pooler) for unit in units(config)]
    assert order == [("vgg16", "avg"), ("vgg16", "dpp_lite_sym"), ("resnet50", "avg"), ("resnet50", "dpp_lite_sym")]


def _row(pooler: str, status: str, attempt: str, cell_rows: int = 1, host: str = "a", **extra) -> dict:
    return {"model": "m", "pooler": pooler, "tier": "t", "scope": "network", "layer": "", "metric": "params",
            "quantity": "params", "value": 1.0, "status": status, "attempt": attempt, "cell_rows": cell_rows,
            "host": host, "device_name": "cpu", **extra}


def test_merge_keeps_complete_measured_attempts_once_per_device(tmp_path):
    stem = tmp_path / "run"
    lines = lambda rows: "".join(json.dumps(r) + "\n" for r in rows)  # noqa: E731
    (tmp_path / "run.rank0.jsonl").write_text(lines([_row("max", "ok", "r0#1"), _row("p", "ok", "r0#2"),
                                                     _row("q", "ok", "r0#3", cell_rows=2)]))  # q: cut short
    (tmp_path / "run.rank1.jsonl").write_text(lines([_row("max", "ok", "r1#1", host="b"),
                                                     _row("p", "error", "r1#2"), _row("q", "ok", "r1#3")]))
    (tmp_path / "run.rank1.20260101-000000.jsonl").write_text(lines([_row("z", "ok", "old#1")]))  # moved aside
    merged = _records(shards.merge_shards(stem))
    kept = {(r["pooler"], r["host"], r["attempt"]) for r in merged}
    # the measured p beats the later error; the cut q attempt is dropped; each host keeps its own baseline
    assert kept == {("max", "a", "r0#1"), ("max", "b", "r1#1"), ("p", "a", "r0#2"), ("q", "a", "r1#3")}
    assert _records(shards.merge_shards(stem)) == merged  # merging again changes nothing


def _device_file(path: Path, host: str, device: str, baseline_ms: float, pooler_ms: float) -> Path:
    rows = []
    for pooler, ms in ((BASELINE_POOLER, baseline_ms), ("avg", pooler_ms)):
        tier = "torchvision" if pooler == BASELINE_POOLER else "vectorized"
        rows.append({**_row(pooler, "ok", f"{host}#{pooler}", host=host), "tier": tier, "model": "vgg16",
                     "metric": "latency_forward", "quantity": "latency_forward", "value": ms, "unit": "ms",
                     "shape": "1x3x32x32", "error": "", "detail": "", "seconds": 0.1, "device_name": device,
                     "device": "cuda", "dtype": "float32", "batch": 8, "resolution": 224, "threads": 1,
                     "torch": "2.14.1" if host == "a" else "2.13.0"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_report_of_two_files_shows_both_devices_and_ratios_within_each(tmp_path, capsys):
    first = _device_file(tmp_path / "a100.jsonl", "a", "NVIDIA A100", baseline_ms=10.0, pooler_ms=12.0)
    second = _device_file(tmp_path / "h100.jsonl", "b", "NVIDIA H100", baseline_ms=4.0, pooler_ms=6.0)
    out = tmp_path / "merged.md"
    assert cli.main(["report", str(first), str(second), "--out", str(out)]) == 0
    text = out.read_text()
    assert "NVIDIA A100 @ a" in text and "NVIDIA H100 @ b" in text
    table = [line for line in text.splitlines() if line.startswith("| avg[vectorized]")][0]
    # 12/10 on the A100 and 6/4 on the H100; a cross-device ratio would read 12/4 = 3.00 or 6/10 = 0.60
    assert "1.20" in table and "1.50" in table and "3.00" not in table and "0.60" not in table
    assert "torch: 2.14.1 on NVIDIA A100 @ a, 2.13.0 on NVIDIA H100 @ b" in text and "- host:" not in text
    # one file measured on both (a two-host torchrun run) gets the same side-by-side layout
    both = tmp_path / "both.jsonl"
    both.write_text(first.read_text() + second.read_text())
    text = report.write_report(both).read_text()
    assert "NVIDIA A100 @ a" in text and "NVIDIA H100 @ b" in text and "3.00" not in text


def test_report_of_several_files_rejects_a_name(tmp_path, capsys):
    first = _device_file(tmp_path / "a.jsonl", "a", "x", 1.0, 1.0)
    assert cli.main(["report", str(first), str(first), "--name", "n"]) == 2
    assert "--name applies to one results file" in capsys.readouterr().err


class _Counter:
    """The store's part a rank's work loop uses: an atomic counter (here a plain one) and heartbeats."""

    def __init__(self):
        self.next = 0

    def claim(self) -> int:
        self.next += 1
        return self.next - 1

    def heartbeat(self) -> None:
        pass


def test_a_rank_whose_device_fails_records_errors_and_stops_taking_work(tmp_path, monkeypatch):
    from poolbench.run import rank as distributed_run
    from poolbench import metrics

    monkeypatch.delenv(distributed.FAULT_VARIABLE, raising=False)
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    exec(textwrap.dedent(NETWORK_FILE), {})

    def broken(subject, name):  # every kernel launch fails, as after a sticky CUDA error
        return [subject.row(name, name, None, "", "error", "RuntimeError: CUDA error: an illegal memory access")]

    monkeypatch.setattr(metrics, "measure", broken)
    monkeypatch.setattr(distributed_run, "device_healthy", lambda device: False)
    config = runner.RunConfig(models=(MODEL,), poolers=POOLERS, tiers=("fastest",), metrics=("params",), batch=1,
                              resolution=32, out=tmp_path, name="grid")
    store = _Counter()
    shard, counts = distributed_run._measure_units(config, distributed.Launch(0, 2, 0, 2), store)
    rows = _records(shard.with_name(shard.name + ".jsonl"))
    assert counts["errors"] == len(rows) > 0 and all(row["status"] == "error" for row in rows)
    assert store.next == 1  # one unit taken, then it stopped: the other ranks take the rest
    assert {row["pooler"] for row in rows} == {BASELINE_POOLER, distributed_run.units(config)[0].pooler}
