"""The one timing policy: interleaved rounds, paired ratio, eager vs CUDA-graph timing, autocast and channels-last.

No GPU here: the CUDA-graph path is checked against a stand-in of ``torch.cuda`` that records what the
capture does (warm-up on a side stream, one captured call, replays that never call the step again).
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from poolbench import cli
from poolbench.measure import timing
from poolbench.measure.metric_subject import Subject
from poolbench.measure.subject import PassSubject, paired_ratio
from poolbench.metrics import Settings
from poolbench.run import layerbench, runner, sweep

from plugin_helpers import load_plugin_file
from test_plugin_contract import NETWORK_FILE

FAST = Settings(warmup=0, min_run_time=0.005, rounds=2)


# ---------------------------------------------------------------------------------------------- timing modes

def test_graph_timing_is_refused_off_cuda_with_a_clear_message():
    with pytest.raises(ValueError, match="--timing graph needs a CUDA device.*use --timing eager"):
        timing.check_timing("graph", "cpu")
    with pytest.raises(ValueError, match="timing must be one of eager, graph"):
        timing.check_timing("lazy", "cpu")
    timing.check_timing("graph", "cuda")  # allowed by name; capture needs a GPU, checked when it runs
    with pytest.raises(ValueError, match="timing must be 'eager' or 'graph'"):
        Settings(timing="lazy")


@pytest.mark.parametrize("command", [["layerbench", "--timing", "graph", "--layers", "5"],
                                     ["run", "--timing", "graph", "--quick", "--models", "vgg16"]])
def test_cli_graph_timing_on_cpu_exits_2_naming_it(command, capsys, tmp_path):
    assert cli.main(command + ["--out", str(tmp_path / ("x.md" if command[0] == "layerbench" else "r"))]) == 2
    err = capsys.readouterr().err
    assert "--timing graph needs a CUDA device" in err and len(err.strip().splitlines()) == 1


class FakeCuda:
    """Records the CUDA-graph calls :func:`capture_graph` makes, in order."""

    def __init__(self):
        self.log: list[str] = []
        fake = self

        class Stream:
            def __init__(self, device=None):
                fake.log.append("new side stream")

            def wait_stream(self, other):
                fake.log.append("side waits for current")

        class CurrentStream:
            def wait_stream(self, other):
                fake.log.append("current waits for side")

        class Graph:
            def replay(self):
                fake.log.append("replay")

        self.Stream, self.CUDAGraph, self._current = Stream, Graph, CurrentStream()
        self.capturing = self.on_side = False

    def current_stream(self, device=None):
        return self._current

    def synchronize(self, device=None):
        self.log.append("synchronize")

    def stream(self, stream):
        fake = self

        class Context:
            def __enter__(self):
                fake.on_side = True

            def __exit__(self, *exc):
                fake.on_side = False

        return Context()

    def graph(self, graph):
        fake = self

        class Context:
            def __enter__(self):
                fake.capturing = True
                fake.log.append("capture begins")

            def __exit__(self, *exc):
                fake.capturing = False
                fake.log.append("capture ends")

        return Context()


def test_capture_graph_warms_up_on_a_side_stream_captures_once_and_replays_without_the_step():
    cuda = FakeCuda()
    calls = []

    def step():
        calls.append("side" if cuda.on_side else "captured" if cuda.capturing else "outside")
        return torch.ones(2)

    replay = timing.capture_graph(step, "cuda", warmup=3, cuda=cuda)
    assert calls == ["side", "side", "side", "captured"]
    assert cuda.log.index("side waits for current") < cuda.log.index("current waits for side") \
        < cuda.log.index("capture begins")
    replay()
    replay()
    assert calls == ["side", "side", "side", "captured"]  # a replay never runs the Python step
    assert cuda.log[-2:] == ["replay", "replay"]
    assert torch.equal(replay.outputs, torch.ones(2))  # the captured outputs live as long as the replay


def test_time_rounds_interleaves_subjects_and_drops_a_failing_one():
    order = []

    def broken():
        raise RuntimeError("kernel exploded\nsecond line")

    steps = {"a": lambda: None, "b": broken, "c": lambda: None}
    times, errors = timing.time_rounds(steps, "cpu", rounds=3, warmup=0, min_run_time=0.001,
                                       on_call=lambda key, r: order.append((r, key)))
    assert order == [(0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "c"), (2, "a"), (2, "c")]
    assert len(times["a"]) == len(times["c"]) == 3 and times["b"] == []
    assert errors == {"b": "RuntimeError: kernel exploded"}
    assert all(t > 0 for t in times["a"])


def test_time_rounds_in_graph_mode_captures_each_step_once_and_times_replays_every_round(monkeypatch):
    captured, timed = [], []

    def fake_capture(step, device, warmup):
        captured.append(step)
        return lambda: None

    def fake_latency(replay, device, min_run_time, max_runs):
        timed.append(replay)
        return timing.Latency(0.5, 0.4, 0.6, 10, "fake")

    monkeypatch.setattr(timing, "capture_graph", fake_capture)
    monkeypatch.setattr(timing, "_cuda_latency", fake_latency)
    a, b = (lambda: None), (lambda: None)
    times, errors = timing.time_rounds({"a": a, "b": b}, "cuda", rounds=4, timing="graph")
    assert captured == [a, b] and len(timed) == 8
    assert times == {"a": [0.5] * 4, "b": [0.5] * 4} and errors == {}


def test_one_statistic_and_one_ratio():
    assert timing.combine_rounds([3.0, 1.0, 2.0]) == 1.0  # the policy: the least-disturbed round
    assert timing.combine_rounds([3.0, 1.0, 2.0], "median") == 2.0
    assert math.isnan(timing.combine_rounds([]))
    # the ratio is paired per round: a slow round hits both sides and cancels
    assert paired_ratio([2.0, 20.0, 2.2], [1.0, 10.0, 1.0]) == pytest.approx(2.0)
    assert math.isnan(paired_ratio([1.0, 2.0], [1.0]))
    assert timing.host_bound(3.0, 1.0) and not timing.host_bound(1.2, 1.0) and not timing.host_bound(1.0, math.nan)


def test_latency_metric_in_graph_mode_reports_both_timings_and_the_host_bound_flag(monkeypatch):
    from poolbench.measure import builtin_metrics

    def fake_rounds(steps, device, *, rounds, warmup, min_run_time, timing):
        return {key: [4.0 if timing == "eager" else 1.0] * rounds for key in steps}, {}

    monkeypatch.setattr(builtin_metrics, "time_rounds", fake_rounds)
    subject = Subject("vgg16", "max", "torchvision", "layer", device="cpu", batch=1, resolution=32,
                      sites=[_site()], shape=(1, 4, 8, 8), settings=Settings(rounds=2, timing="graph"))
    eager, graph = builtin_metrics.latency_train(subject)
    assert (eager.name, eager.value, graph.name, graph.value) == ("latency_train", 4.0, "latency_train_graph", 1.0)
    assert eager.detail["host_bound"] is True and graph.detail["timing"] == "graph"
    only_eager = builtin_metrics.latency_forward(Subject("vgg16", "max", "torchvision", "layer", device="cpu",
                                                         batch=1, resolution=32, sites=[_site()],
                                                         shape=(1, 4, 8, 8), settings=Settings(rounds=2)))
    assert [q.name for q in only_eager] == ["latency_forward"]


def _site():
    from poolbench.models import PoolSite

    return PoolSite("features.4", 4, 2, 2, 0, "test")


# ---------------------------------------------------------------------------------------------- as people train

def test_autocast_bf16_runs_the_forward_in_bf16_and_returns_fp32_parameter_grads():
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    subject = PassSubject(conv, x, list(conv.parameters()), conv, amp="bf16")
    assert subject.forward().dtype == torch.bfloat16
    assert subject.grad_out.dtype == torch.bfloat16  # the upstream gradient matches the autocast output
    grads = subject.train_step()
    assert grads[0].dtype == torch.float32 and grads[1].dtype == torch.float32  # x, then the weight
    assert PassSubject(conv, x, list(conv.parameters()), conv).forward().dtype == torch.float32
    with pytest.raises(ValueError, match="amp must be one of off, bf16, fp16"):
        PassSubject(conv, x, amp="tf32")


def test_channels_last_subject_puts_module_and_input_in_channels_last():
    subject = Subject("vgg16", "dpp_lite_sym", "vectorized", "layer", device="cpu", batch=1, resolution=32,
                      sites=[_site()], shape=(1, 4, 8, 8), channels_last=True, amp="bf16")
    x = subject.inputs()
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert subject.passes.amp == "bf16"
    assert subject.passes.train_step()[0].shape == x.shape


@pytest.fixture()
def tinynet(monkeypatch, tmp_path):
    assert load_plugin_file(monkeypatch, tmp_path, "poolbench_plugin_tinynet", NETWORK_FILE) == {}
    return tmp_path


def _tiny_config(out, **options):
    return runner.RunConfig(models=("plugin_tinynet",), poolers=("dpp_lite_sym",), tiers=("vectorized",),
                            metrics=("latency_forward", "latency_train"), batch=1, resolution=16, out=out,
                            name="amp", settings=FAST, threads=1, **options)


def test_run_under_bf16_autocast_and_channels_last_records_both_and_refuses_a_resume_without_them(tinynet):
    result = sweep.run(_tiny_config(tinynet / "out", amp="bf16", channels_last=True), progress=False)
    rows = [json.loads(line) for line in result.results.read_text().splitlines()]
    assert result.errors == 0 and rows
    assert {(row["amp"], row["channels_last"]) for row in rows} == {("bf16", "True")}
    assert {row["scope"] for row in rows if row["status"] == "ok"} == {"network", "layer"}
    assert all("timing='eager'" in row["timing"] for row in rows)
    header = result.report.read_text().split("## ")[0]
    assert "autocast bf16" in header and "channels-last True" in header and "timing eager" in header
    with pytest.raises(ValueError, match="amp: bf16 in the file, off now"):
        sweep.run(_tiny_config(tinynet / "out", channels_last=True, resume=True), progress=False)
    with pytest.raises(ValueError, match="channels_last: True in the file, False now"):
        sweep.run(_tiny_config(tinynet / "out", amp="bf16", resume=True), progress=False)


def test_run_config_rejects_bad_training_settings():
    with pytest.raises(ValueError, match="amp must be one of"):
        runner.RunConfig(amp="int8")
    with pytest.raises(ValueError, match="channels_last must be True or False"):
        runner.RunConfig(channels_last="yes")
    with pytest.raises(ValueError, match="--timing graph needs a CUDA device"):
        runner.RunConfig(settings=Settings(timing="graph"))


def test_layerbench_under_autocast_and_channels_last_records_them_in_rows_and_report():
    rows, meta = layerbench.run_layerbench("cpu", batch=1, resolution=32, tiers=["vectorized"], layers=[5],
                                           min_run_time=0.005, repeats=2, amp="bf16", channels_last=True)
    assert [row.pooler for row in rows] == ["avg_pool2d", "max_pool2d", "dpp_lite_sym[vectorized]"]
    assert all((row.amp, row.channels_last, row.timing) == ("bf16", True, "eager") for row in rows)
    assert not any(row.error for row in rows) and all(row.fwd_vs_avg > 0 for row in rows)
    assert rows[0].fwd_vs_avg == 1.0 and all(row.host_bound is None for row in rows)
    report = layerbench.to_markdown(rows, meta)
    assert "autocast bf16, channels-last True" in report and "graph / avg" not in report


def test_layerbench_report_shows_graph_columns_and_flags_host_bound_rows():
    rows, meta = layerbench.run_layerbench("cpu", batch=1, resolution=32, tiers=["vectorized"], layers=[5],
                                           min_run_time=0.005, repeats=1)
    meta = {**meta, "timing": "graph"}
    rows[2].fwdbwd_graph_vs_avg, rows[2].host_bound = 0.4, True
    rows[0].host_bound = rows[1].host_bound = False
    report = layerbench.to_markdown(rows, meta)
    assert "fwd+bwd graph / avg" in report and "host-bound" in report and "**yes**" in report
    assert "0.40" in report


def test_the_time_gate_ratio_is_the_same_paired_ratio(monkeypatch):
    """``gate.time_case`` keeps its signature; its ``ratio`` is the per-round paired ratio, not a ratio of medians."""
    from types import SimpleNamespace

    from poolbench.gate.measure import time_case
    from poolbench.measure import BenchConfig

    clock = {"now": 0.0}
    pooler_costs = iter([2.0, 2.0] + [2.0, 2.0, 2.0, 30.0, 30.0])   # warm-up, probe, then 5 rounds
    comparator_costs = iter([1.0, 1.0] + [1.0, 1.0, 20.0, 20.0, 20.0])

    def ticking(costs):
        def call():
            clock["now"] += next(costs)
        return call

    class FakeBenchmark:
        def pedantic(self, fn, setup, rounds, warmup_rounds, iterations):
            data = []
            for _ in range(rounds):
                setup()
                start = clock["now"]
                fn()
                data.append(clock["now"] - start)
            self.stats = SimpleNamespace(stats=SimpleNamespace(data=data))

    monkeypatch.setattr(BenchConfig, "timer", property(lambda self: lambda: clock["now"]))
    config = BenchConfig(budget_s=1e-9, min_rounds=5, max_rounds=5)
    info = time_case(FakeBenchmark(), ticking(pooler_costs), ticking(comparator_costs), config)
    assert info["rounds"] == 5
    # per-round ratios 2, 2, 0.1, 1.5, 1.5: their median; the ratio of medians (2 / 20) would be 0.1
    assert info["ratio"] == info["paired_ratio"] == pytest.approx(1.5)
    assert info["median_ratio"] == pytest.approx(0.1)


def test_run_report_shows_graph_timing_and_flags_host_bound_cells():
    """With ``--timing graph`` the report has eager and graph columns, a host-bound flag and the settings header."""
    import pandas as pd

    from poolbench.metrics import BASELINE_POOLER, BASELINE_TIER
    from poolbench.report import run_report

    env = {"timing": str(Settings(timing="graph")), "amp": "fp16", "channels_last": "True", "device": "cuda",
           "device_name": "GPU", "threads": 1, "dtype": "float32", "batch": 32, "resolution": 224}
    values = {  # (pooler, tier): (eager train ms, graph train ms)
        (BASELINE_POOLER, BASELINE_TIER): (1.0, 0.9),
        ("dpp_lite_sym", "triton"): (4.0, 1.0),   # 4x eager vs graph: the host path sets its speed
        ("dpp_lite_sym", "cuda"): (1.1, 1.0),
    }
    rows = [{"model": "vgg16", "pooler": p, "tier": t, "scope": "layer", "layer": "features.30",
             "shape": "32x512x14x14", "metric": "latency_train", "quantity": q, "value": v, "unit": "ms",
             "status": "ok", "error": "", "detail": "", "seconds": 0.1, **env}
            for (p, t), (eager, graph) in values.items()
            for q, v in (("latency_train", eager), ("latency_train_graph", graph))]
    text = run_report.build_report(pd.DataFrame(rows), "graph")
    assert "timing graph (eager and CUDA-graph replays), autocast fp16, channels-last True" in text
    layer_table = text[text.index("per layer"):]
    assert "train graph ×" in layer_table and "host-bound" in layer_table
    triton = next(line for line in layer_table.splitlines() if "[triton]" in line)
    cuda = next(line for line in layer_table.splitlines() if "[cuda]" in line)
    assert "**yes**" in triton and "**yes**" not in cuda
    cells = [cell.strip() for cell in triton.split("|")]
    assert float(cells[4]) == 4.0 and cells[5] == "1.11"  # train ×: eager 4.0 / 1.0; train graph ×: 1.0 / 0.9
