"""Results you can trust, part 2: a plugin's output, crafted result files, names and files on odd file systems.

Each test names the failure it guards against (found by probing poolbench as a demanding user would).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import poolbench
from poolbench import cli, registry
from poolbench.metrics import MetricRow as Row
from poolbench.run import results, runner, sweep

from plugin_helpers import isolate_registries

REPO = Path(__file__).resolve().parents[1]


from results_helpers import env as _env, row as _row, write_cells as _write  # noqa: E402


# ---------------------------------------------------------------------------------------------
# the pooler contract: shape, dtype and device
# ---------------------------------------------------------------------------------------------

class _Float64(poolbench.Pool2d):
    def pool(self, x):
        return torch.nn.functional.max_pool2d(x, self.kernel_size, self.stride, self.padding).double()


class _Meta(poolbench.Pool2d):
    def pool(self, x):
        y = torch.nn.functional.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        return torch.empty_like(y, device="meta")


class _BareFloat64(torch.nn.Module):  # not a Pool2d: create()'s hook checks it
    def __init__(self, channels, kernel_size=2, stride=2, padding=0):
        super().__init__()
        self.k, self.s, self.p = kernel_size, stride, padding

    def forward(self, x):
        return torch.nn.functional.max_pool2d(x, self.k, self.s, self.p).double()


class _Max(poolbench.Pool2d):
    def pool(self, x):
        return torch.nn.functional.max_pool2d(x, self.kernel_size, self.stride, self.padding)


def _register(monkeypatch, name, factory):
    """``name``: a correct reference tier (what `check` compares against) and ``factory`` as its vectorized tier."""
    registry.load_plugins()  # before isolating: the in-tree plugins stay loaded for the tests after this one
    isolate_registries(monkeypatch)
    for tier, module in (("reference", _Max), ("vectorized", factory)):
        registry.register(name, tier, params="0", param_count=lambda c, k: 0, macs=lambda g, o: 0)(module)


@pytest.mark.parametrize("factory, message", [
    (_Float64, r"returned float64 for float32 input"),
    (_Meta, r"returned a tensor on meta for input on cpu"),
    (_BareFloat64, r"wrong64\[vectorized\] returned float64 for float32 input"),
])
def test_a_pooler_returning_another_dtype_or_device_is_an_error(monkeypatch, factory, message):
    _register(monkeypatch, "wrong64", factory)
    module = poolbench.create("wrong64", 2, tier="vectorized")
    with pytest.raises(RuntimeError, match=message):
        module(torch.rand(1, 2, 8, 8))


def test_half_precision_in_half_precision_out_passes():
    for name in ("max", "dpp_lite_sym", "softpool"):
        module = poolbench.create(name, 2).half()
        assert module(torch.rand(1, 2, 8, 8, dtype=torch.float16)).dtype == torch.float16


def test_check_and_run_record_a_float64_plugin_as_an_error(monkeypatch, tmp_path, capsys):
    _register(monkeypatch, "wrong64", _Float64)
    assert cli.main(["check", "--poolers", "wrong64", "--no-gradcheck"]) == 1
    assert "float64 for float32 input" in capsys.readouterr().out
    config = runner.RunConfig(models=("vgg16",), poolers=("wrong64",), tiers=("vectorized",), metrics=("latency_forward",), batch=1,
                              resolution=32, threads=1, out=tmp_path, name="w",
                              settings=poolbench.metrics.Settings(warmup=0, min_run_time=0.001))
    result = sweep.run(config, progress=False, report=False)
    rows = [json.loads(line) for line in result.results.read_text().splitlines()]
    plugin = [row for row in rows if row["pooler"] == "wrong64"]
    assert plugin and all(row["status"] == "error" and "float64" in row["error"] for row in plugin)


# ---------------------------------------------------------------------------------------------
# files kept aside, files poolbench did not write, crafted lines
# ---------------------------------------------------------------------------------------------

def test_three_runs_in_one_second_keep_every_earlier_file(tmp_path):
    """Guards against the aside name's one-second resolution overwriting the first run's file."""
    stem = tmp_path / "r"
    for value in (1.0, 2.0, 3.0, 4.0):
        _write(stem, [[_row(value=value)]])
    kept = sorted(tmp_path.glob("r.*.jsonl"))
    assert len(kept) == 3 and len(list(tmp_path.glob("r.*.csv"))) == 3
    values = sorted(json.loads(path.read_text())["value"] for path in kept)
    assert values == [1.0, 2.0, 3.0]
    for path in kept:  # each JSONL keeps its CSV under the same name
        assert path.with_suffix(".csv").exists()


def test_resume_refuses_a_jsonl_poolbench_did_not_write(tmp_path):
    stem = tmp_path / "foreign"
    (tmp_path / "foreign.jsonl").write_text('{"name": "my notes", "value": 3}\n')
    with pytest.raises(ValueError, match=r"cannot resume .*foreign.jsonl: it holds no poolbench result row .*"
                                         r"choose another --name"):
        _write(stem, [[_row()]], resume=True)
    assert (tmp_path / "foreign.jsonl").read_text() == '{"name": "my notes", "value": 3}\n'


CRAFTED = {
    "deep nesting": '{"model": ' + "[" * 200_000 + "]" * 200_000 + "}",
    "5,000-digit integer": '{"model": "vgg16", "value": ' + "9" * 5000 + "}",
    "NaN": None,  # a real row with "value": NaN
    "Infinity": None,
    "wrong-typed field": None,  # a real row whose pooler is a list
    "cell_rows two": None,
}


def _crafted(kind: str, good: dict) -> str:
    if CRAFTED[kind] is not None:
        return CRAFTED[kind]
    row = dict(good, attempt="crafted#1", metric="macs")
    if kind == "NaN":
        return json.dumps(row).replace('"value": 1.0', '"value": NaN')
    if kind == "Infinity":
        return json.dumps(row).replace('"value": 1.0', '"value": -Infinity')
    if kind == "wrong-typed field":
        return json.dumps(dict(row, pooler=["avg", "max"]))
    return json.dumps(dict(row, cell_rows="two"))


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_a_crafted_line_is_skipped_and_counted_by_report_resume_and_merge(tmp_path, kind, capsys):
    """Guards against one crafted line killing `report` and blocking `--resume` (RecursionError, OverflowError…)."""
    stem = tmp_path / "run"
    _write(stem, [[_row(metric="params")], [_row(metric="latency_forward", quantity="ms")]])
    jsonl = tmp_path / "run.jsonl"
    good = json.loads(jsonl.read_text().splitlines()[0])
    lines = jsonl.read_text().splitlines()
    jsonl.write_text("\n".join([lines[0], _crafted(kind, good), lines[1]]) + "\n")

    with pytest.warns(UserWarning, match=r"run.jsonl: skipped 1 unreadable line\(s\) \(line 2\)"):
        frame = results.load_results(jsonl)
    assert sorted(frame["metric"]) == ["latency_forward", "params"]
    assert results.measured_cells(stem) == {("vgg16", "avg", "vectorized", "network", "", "params"),
                                            ("vgg16", "avg", "vectorized", "network", "", "latency_forward")}
    _write(stem, [[_row(metric="memory", quantity="bytes")]], resume=True)  # --resume appends after it
    with pytest.warns(UserWarning, match=r"run.jsonl: skipped 1 unreadable line\(s\) \(line 2\)"):
        assert cli.main(["report", str(jsonl), "--out", str(tmp_path)]) == 0

    shard = tmp_path / "s.rank0.jsonl"  # the same line in a shard: the merge skips it too
    shard.write_text(jsonl.read_text())
    from poolbench.run import shards

    with pytest.warns(UserWarning, match=r"s.rank0.jsonl: skipped 1 unreadable line"):
        merged = shards.merge_shards(tmp_path / "s")
    assert len(merged.read_text().splitlines()) == 3


def test_results_that_are_not_a_regular_file_are_refused(tmp_path, capsys):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    (tmp_path / "zero.jsonl").symlink_to("/dev/zero")
    for path in (fifo, tmp_path / "zero.jsonl"):
        assert cli.main(["report", str(path)]) == 2
        assert "is not a regular file" in capsys.readouterr().err


def test_a_measured_nan_is_written_as_an_error_row(tmp_path):
    _write(tmp_path / "n", [[_row(value=float("nan"))]])
    row = json.loads((tmp_path / "n.jsonl").read_text())
    assert row["status"] == "error" and row["value"] is None and "non-finite" in row["error"]


def test_merge_refuses_shards_measured_with_other_settings(tmp_path):
    from poolbench.run import shards

    _write(shards.shard_stem(tmp_path / "g", 0), [[_row()]], env={**_env(batch=1), "rank": 0})
    _write(shards.shard_stem(tmp_path / "g", 1), [[_row(pooler="lip")]], env={**_env(batch=2), "rank": 1})
    with pytest.raises(ValueError, match=r"cannot merge .*g.rank1.jsonl: .* other settings .*"
                                         r"\(batch: 1 in g.rank0.jsonl, 2 in g.rank1.jsonl\)"):
        shards.merge_shards(tmp_path / "g")
    assert not (tmp_path / "g.jsonl").exists()


# ---------------------------------------------------------------------------------------------
# names, links and temporary files
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [250, 230])
def test_a_name_too_long_for_the_file_system_is_refused_up_front(tmp_path, capsys, length):
    """250 failed at once, 235 only when an earlier run was moved aside: both are refused before measuring."""
    name = "n" * length
    argv = ["run", "--models", "vgg16", "--poolers", "avg", "--metrics", "params", "--out", str(tmp_path),
            "--name", name, "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"run name of {length} bytes is too long" in err and "choose a --name of at most 219" in err
    assert list(tmp_path.iterdir()) == []


def test_the_lock_and_the_results_are_never_opened_through_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "r.lock").symlink_to(victim)
    with pytest.raises(ValueError, match=r"r.lock is a symbolic link"):
        _write(tmp_path / "r", [[_row()]])
    (tmp_path / "r.lock").unlink()
    (tmp_path / "r.jsonl").symlink_to(victim)
    with pytest.raises(ValueError, match=r"r.jsonl is a symbolic link"):
        _write(tmp_path / "r", [[_row()]], resume=True)
    assert victim.read_text() == "precious\n"


def test_the_merge_writes_no_predictable_temporary_file(tmp_path):
    from poolbench.run import shards

    _write(shards.shard_stem(tmp_path / "g", 0), [[_row()]], env={**_env(), "rank": 0})
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for name in ("g.jsonl", "g.csv"):  # the names the merge used to write first
        (tmp_path / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
    merged = shards.merge_shards(tmp_path / "g")
    assert victim.read_text() == "precious\n"
    assert not merged.is_symlink() and json.loads(merged.read_text())["pooler"] == "avg"
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp") and not path.is_symlink()]


# ---------------------------------------------------------------------------------------------
# write errors, SIGTERM, options
# ---------------------------------------------------------------------------------------------

def test_a_write_error_mid_run_ends_in_one_line_with_the_resume_hint(tmp_path, monkeypatch, capsys):
    from poolbench.run import results as results_module

    real, calls = results_module.append_text, []

    def disk_fills_up(path, text):
        calls.append(path)
        if len(calls) > 2:  # the first cell lands, the second finds the disk full
            raise OSError(28, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(results_module, "append_text", disk_fills_up)
    argv = ["run", "--models", "vgg16", "--poolers", "avg", "--tiers", "vectorized", "--metrics", "params", "macs",
            "--batch", "1", "--resolution", "32", "--no-layers", "--out", str(tmp_path), "--name", "full",
            "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("poolbench run: error: cannot write ") and "No space left on device" in err[-1]
    assert "--resume" in err[-1] and "Traceback" not in "\n".join(err)
    saved = [json.loads(line) for line in (tmp_path / "full.jsonl").read_text().splitlines()]
    assert len({row["attempt"] for row in saved}) == 1 and len(saved) == saved[0]["cell_rows"]  # the first cell


def test_sigterm_is_treated_like_ctrl_c(tmp_path):
    out, name = tmp_path / "out", "term"
    command = [sys.executable, "-m", "poolbench", "run", "--models", "vgg16", "--poolers", "avg", "lip",
               "--tiers", "vectorized", "--metrics", "params", "macs", "latency_forward", "--batch", "1",
               "--resolution", "32", "--min-run-time", "0.05", "--rounds", "1", "--threads", "1", "--no-progress",
               "--out", str(out), "--name", name]
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(command, cwd=REPO, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    jsonl = out / f"{name}.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:
        if jsonl.exists() and jsonl.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143, err.decode()[-2000:]
    assert "terminated (SIGTERM)" in err.decode() and "--resume" in err.decode() and b"Traceback" not in err


@pytest.mark.parametrize("option, value", [("--batch", "1" + "0" * 400), ("--batch", "9" * 5000),
                                           ("--min-run-time", "1" + "0" * 400), ("--rank-timeout", "nan"),
                                           ("--rank-timeout", "inf"), ("--resolution", "1e3")])
def test_numeric_options_are_finite_numbers_in_range(option, value, capsys):
    """Guards against a 400-digit --batch ending in an OverflowError traceback instead of a usage error."""
    assert cli.main(["run", option, value]) == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err and len(err.splitlines()[-1]) < 200


def test_placement_both_measures_vgg16_once():
    config = runner.RunConfig(models=("vgg16", "resnet50"), placement="both", metrics=("params",), layers=False,
                              poolers=("avg", "dpp_lite_sym"), tiers=("vectorized",))
    # only DPP's authors published a ResNet (visinf/dpp); nobody's authors' VGG differs from the paper's sites
    assert config.models == ("vgg16", "resnet50", "resnet50@authors")
    cells = [group.cell_key("params") for group in runner.plan(config)]
    assert len(cells) == len(set(cells)) and sum(cell.model == "vgg16" for cell in cells) == 3  # baseline, avg, dpp
    assert {cell.pooler for cell in cells if cell.model == "resnet50@authors"} <= {"max", "dpp_lite_sym"}
