"""`poolbench run` / `poolbench report`: failing cells recorded, cells appended, resume, report contents."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from poolbench import cli, registry, report
from poolbench.run import results, runner, sweep
from poolbench.metrics import BASELINE_POOLER, BASELINE_TIER, MetricRow, Settings

FAST = Settings(warmup=0, min_run_time=0.005)


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory):
    """ResNet-50 at 40²: layer3 sees a 5×5 map, which Full-DPP's 3×3 guide cannot land on — a real failing cell."""
    out = tmp_path_factory.mktemp("run")
    config = runner.RunConfig(device="cpu", models=("resnet50",), poolers=("dpp_lite_sym", "dpp_full_sym"),
                              tiers=("vectorized",), metrics=("params", "latency_forward"), batch=1,
                              resolution=40, out=out, name="failing", settings=FAST, threads=1)
    return config, sweep.run(config, progress=False)


def test_a_failing_cell_is_recorded_and_the_run_goes_on(failing_run):
    config, result = failing_run
    rows = _rows(result.results)
    full_latency = [r for r in rows if r["pooler"] == "dpp_full_sym" and r["scope"] == "network"
                    and r["metric"] == "latency_forward"]
    assert full_latency[0]["status"] == "error" and "Full-DPP" in full_latency[0]["error"]
    # the same network's parameter cell, the other pooler and the baseline still measured
    ok = {(r["pooler"], r["scope"], r["metric"]) for r in rows if r["status"] == "ok"}
    assert ("dpp_full_sym", "network", "params") in ok
    assert ("dpp_lite_sym", "network", "latency_forward") in ok
    assert (BASELINE_POOLER, "network", "latency_forward") in ok
    # layers Full-DPP can pool (even sizes) are measured, the 5×5 one is an error
    full_layers = {r["layer"]: r["status"] for r in rows if r["pooler"] == "dpp_full_sym" and r["scope"] == "layer"
                   and r["metric"] == "latency_forward"}
    assert full_layers["layer3.0 (main+shortcut)"] == "error"
    assert full_layers["maxpool"] == "ok"
    assert result.errors >= 2
    # every row carries the environment
    assert {"torch", "device_name", "dtype", "batch", "commit"} <= set(rows[0])
    assert rows[0]["torch"] == torch.__version__ and rows[0]["batch"] == 1
    # and the report was written anyway, listing the failure
    text = result.report.read_text()
    assert "## ResNet-50" in text and "Cells that did not run" in text and "Full-DPP" in text
    assert result.csv.exists() and len(pd.read_csv(result.csv)) == len(rows)


def test_resume_skips_measured_cells_and_retries_errors(failing_run):
    config, first = failing_run
    before = _rows(first.results)
    errors = sum(1 for r in before if r["status"] == "error")
    again = sweep.run(runner.RunConfig(**{**config.__dict__, "resume": True}), progress=False, report=False)
    after = _rows(again.results)
    assert len(after) == len(before) + errors  # only the failed cells ran again
    frame = results.load_results(again.results)
    assert not frame.duplicated(["model", "pooler", "tier", "scope", "layer", "metric", "quantity"]).any()


def test_unavailable_tiers_are_skipped_with_the_registry_reason():
    unavailable = [(spec.name, spec.tier) for spec in registry.specs() if spec.unavailable_reason("cpu")]
    if not unavailable:
        pytest.skip("every registered tier runs on this machine's CPU")
    name, tier = unavailable[0]
    config = runner.RunConfig(models=("vgg16",), poolers=(name,), tiers=(tier,), resolution=32, batch=1)
    skipped = [g for g in runner.plan(config) if g.pooler == name]
    assert len(skipped) == 1 and skipped[0].skip_reason == registry.get_spec(name, tier).unavailable_reason("cpu")


def test_plan_covers_every_registered_pooler_and_skips_the_reference_tier():
    config = runner.RunConfig(models=("vgg16",), resolution=32, batch=1)
    groups = runner.plan(config)
    network = {(g.pooler, g.tier): g for g in groups if g.scope == "network"}
    assert (BASELINE_POOLER, BASELINE_TIER) in network
    for spec in registry.specs():
        assert (spec.name, spec.tier) in network
    if ("dpp_lite_sym", "reference") in network:
        assert "too slow" in network[("dpp_lite_sym", "reference")].skip_reason
    layers = {g.layer for g in groups if g.scope == "layer"}
    assert layers == {"features.4", "features.9", "features.16", "features.23", "features.30"}


@pytest.fixture
def flaky_pooler(isolated_registries):
    """A pooler whose preferred CPU tier fails on first use (like a C++ build that breaks) and whose next one works."""
    from poolbench.base import Pool2d

    class Broken(Pool2d):
        def pool(self, x):
            raise RuntimeError("building the cpu extension failed: no such header")

    class Works(Pool2d):
        def pool(self, x):
            return torch.nn.functional.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    registry.register("flaky_test_pooler", "cpp", priority=50)(Broken)  # preferred over vectorized (0)
    registry.register("flaky_test_pooler", "vectorized")(Works)
    return "flaky_test_pooler"


def test_fastest_tier_falls_back_when_the_preferred_one_fails(flaky_pooler):
    config = runner.RunConfig(models=("vgg16",), poolers=(flaky_pooler,), tiers=("fastest",), resolution=32,
                              batch=1, layers=False)
    groups = [g for g in runner.plan(config) if g.pooler == flaky_pooler]
    assert [(g.tier, g.skip_reason is None) for g in groups] == [("cpp", False), ("vectorized", True)]
    assert "no such header" in groups[0].skip_reason
    # an available tier that failed when tried is an error (it should have run), not a skip
    assert [g.skip_status for g in groups] == ["error", "skipped"]


def test_unknown_pooler_is_a_clear_error_before_measuring(capsys):
    """Guards against `run --poolers typo` exiting 0 after measuring only the max-pool baseline."""
    with pytest.raises(ValueError, match="unknown pooler.*'no_such_pooler'.*known: .*dpp_lite_sym"):
        runner.RunConfig(models=("vgg16",), poolers=("no_such_pooler",), resolution=32, batch=1)
    assert cli.main(["run", "--poolers", "no_such_pooler", "--no-progress"]) == 2
    assert "unknown pooler" in capsys.readouterr().err


def test_quick_preset_is_small_and_uses_fastest_tiers():
    config = runner.RunConfig.quick_preset(device="cpu")
    assert config.quick and config.tiers == ("fastest",) and config.batch <= 2 and config.resolution <= 64
    assert set(config.poolers) == set(runner.QUICK_POOLERS) and config.run_name == "quick_cpu"
    assert runner.RunConfig.quick_preset(batch=4).batch == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(capsys):
    assert cli.main(["run", "--device", "cuda", "--quick"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model"):
        runner.RunConfig(models=("alexnet",))
    with pytest.raises(ValueError, match="unknown tier"):
        runner.RunConfig(tiers=("gpu",))
    with pytest.raises(ValueError, match="batch must be a positive int"):
        runner.RunConfig(batch=0)


# ----------------------------------------------------------------------------------------------
# report contents, from synthetic rows (fast)
# ----------------------------------------------------------------------------------------------

def _synthetic_results(tmp_path):
    env = results.environment("cpu", torch.float32, 2, 64)
    writer = results.ResultsWriter(tmp_path / "synthetic", env)
    baseline = {"resnet50": 25_557_032, "resnet101": 44_549_160, "vgg16": 138_357_544}
    for model, params in baseline.items():
        for pooler, tier, overhead, slow in ((BASELINE_POOLER, BASELINE_TIER, 0, 1.0),
                                             ("dpp_lite_sym", "vectorized", 7_296 if model != "vgg16" else 2_944, 1.1),
                                             ("dpp_full_sym", "vectorized", 43_776 if model != "vgg16" else 17_664, 1.3)):
            def row(metric, quantity, value, unit, scope="network", layer="", shape="2x3x64x64"):
                return MetricRow(model, pooler, tier, scope, layer, shape, metric, quantity, value, unit)

            writer.write([row("params", "params", params + overhead, "count"),
                          row("params", "params_overhead", overhead, "count"),
                          row("params", "params_overhead_pct", 100 * overhead / params, "%")])
            writer.write([row("latency_forward", "latency_forward", 10 * slow, "ms")])
            writer.write([row("latency_train", "latency_train", 30 * slow, "ms")])
            writer.write([row("macs", "macs_fvcore", 4e9, "MAC"), row("macs", "macs_flop_counter", 4e9, "MAC")])
            writer.write([row("latency_train", "latency_train", 0.1 * slow, "ms", "layer", "maxpool", "2x64x32x32")])
            writer.write([row("macs", "macs_analytic", 1e5, "MAC", "layer", "maxpool", "2x64x32x32"),
                          row("macs", "macs_fvcore", 1.2e5, "MAC", "layer", "maxpool", "2x64x32x32"),
                          row("macs", "macs_flop_counter", 1.2e5, "MAC", "layer", "maxpool", "2x64x32x32")])
    writer.write([MetricRow("vgg16", "softpool", "cuda", "network", "", "", "all", "all", None, "", "skipped",
                      "no CUDA here")])
    writer.close()
    return writer.jsonl


def test_report_has_tables_plots_and_paper_rows(tmp_path):
    path = report.write_report(_synthetic_results(tmp_path), tmp_path / "out")
    text = path.read_text()
    assert path.name == "synthetic.md"
    for heading in ("## Paper vs measured", "## VGG-16", "## ResNet-50", "## ResNet-101", "# Per layer",
                    "## FLOP cross-check", "## Cells that did not run"):
        assert heading in text, heading
    assert "forward ×" in text and "train ×" in text and "overhead %" in text and "GMACs fvcore" in text
    assert "0.172%" in text and "0.098%" in text and "0.171% (+43,776 params)" in text
    assert "Lite-DPP parameters per feature map | 2" in text.replace("  ", " ") or "| 2 " in text
    assert "≤ 20%" in text and "+30%" in text  # VGG-16 Full-DPP train ratio 1.3
    assert "no CUDA here" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in text
    else:
        assert (tmp_path / "out" / "synthetic_latency.png").exists()
        assert "![synthetic_latency](synthetic_latency.png)" in text


def test_paper_vs_measured_rows(tmp_path):
    frame = results.load_results(_synthetic_results(tmp_path))
    rows = {row["figure"]: row for row in report.paper_vs_measured(frame)}
    assert rows["Full-DPP parameter overhead, ResNet-50"]["agrees"] == "yes"
    assert rows["Full-DPP parameter overhead, ResNet-101"]["agrees"] == "yes"
    assert rows["Lite-DPP parameters per feature map"]["measured"].startswith("2 ")
    assert rows["Full-DPP parameters per feature map"]["measured"].startswith("12 ")
    assert rows["VGG-16 time overhead, dpp_lite_sym[vectorized] (train step)"]["agrees"] == "yes"


def test_report_command(tmp_path, capsys):
    jsonl = _synthetic_results(tmp_path)
    assert cli.main(["report", str(jsonl), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "synthetic.md").exists()
    assert cli.main(["report", str(tmp_path / "missing.jsonl")]) == 2
    assert "no results file" in capsys.readouterr().err
