"""A new pooler, DPP tier, network or metric is one file: everything else reads it from a registry.

Each test writes that one file to a temporary folder, loads it as a
third-party plugin (entry point) and checks that the tests, the checks, the
gate, the FLOP counters and tier choice all pick it up with no other edit.
"""
from __future__ import annotations

import torch

import poolbench
from poolbench.verify import check
from poolbench import flops, gate, models, registry
from poolbench.run import layerbench, runner, sweep
from poolbench.measure import shapes
from plugin_helpers import load_plugin_file

POOLER_FILE = '''
    import torch.nn.functional as F
    from poolbench import Pool2d, register

    class HalfAvg(Pool2d):
        def pool(self, x):
            return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=False) * self.scale

        def __init__(self, channels, kernel_size, stride, padding):
            super().__init__(channels, kernel_size, stride, padding)
            import torch
            self.scale = torch.nn.Parameter(torch.full((channels, 1, 1), 0.5))

    @register("plugin_halfavg", "vectorized", params="C", param_count=lambda channels, kernel_size: channels,
              macs=lambda g, o: (g.taps + 1) * g.outputs(), family="baseline")
    def make(channels, kernel_size, stride, padding):
        return HalfAvg(channels, kernel_size, stride, padding)
'''

TIER_FILE = '''
    from poolbench.dpp import get_kernel, register_dpp_tier

    vectorized = get_kernel("vectorized")

    def plugin_kernel(*args):
        return vectorized(*args)

    register_dpp_tier("plugin_tier", plugin_kernel, priority={"cpu": 1000}, description="a plugin's DPP tier")
'''


def test_a_new_baseline_pooler_is_one_file(monkeypatch, tmp_path):
    assert load_plugin_file(monkeypatch, tmp_path, "poolbench_plugin_halfavg", POOLER_FILE) == {}
    from test_baselines import baseline_poolers

    assert "plugin_halfavg" in baseline_poolers()  # the baseline contract tests are parametrised with it
    spec = poolbench.get_spec("plugin_halfavg")
    assert spec.learnable and not spec.stochastic
    cases = gate.bench_cases(gate.BenchConfig(resolution=32), poolers=["plugin_halfavg"])
    assert {(c.tier, c.pass_) for c in cases} == {("vectorized", "forward"), ("vectorized", "forward_backward")}
    assert len(cases) == 10 and not any(c.skip_reason for c in cases)
    counts = flops.count_layer(poolbench.create("plugin_halfavg", 3), torch.randn(1, 3, 8, 8))
    assert counts["analytic"] == (4 + 1) * 3 * 16  # its own formula, not max pooling's
    results = check.run_checks(check.CheckPlan(poolers=["plugin_halfavg"]))
    assert [r.check for r in results] == ["gradcheck"] * len(check.GRADCHECK_CASES)
    assert all(r.status == "pass" for r in results), results


def test_a_new_dpp_tier_from_a_plugin_is_one_file(monkeypatch, tmp_path):
    assert load_plugin_file(monkeypatch, tmp_path, "poolbench_plugin_tier", TIER_FILE) == {}

    assert "plugin_tier" in registry.known_tiers()
    for variant in ("dpp_lite_sym", "dpp_full_asym", "s3dpp_lite_sym"):
        assert "plugin_tier" in poolbench.tiers(variant)
    assert poolbench.create("dpp_lite_sym", 4).tier == "plugin_tier"  # its priority wins on the CPU
    available, _ = layerbench.dpp_tiers("cpu")
    assert "plugin_tier" in available
    assert any(c.tier == "plugin_tier" for c in gate.bench_cases(gate.BenchConfig(resolution=32)))
    result = check.check_equivalence("dpp_full_asym", "plugin_tier", check.CASES[1])
    assert result.status == "pass", result
    pool = poolbench.create("dpp_full_sym", 3, tier="plugin_tier")
    counts = flops.count_layer(pool, torch.randn(1, 3, 8, 8))
    assert counts["analytic"] == flops.analytic_macs("dpp_full_sym", (1, 3, 8, 8), 2, 2, 0, tier="vectorized")


NETWORK_FILE = '''
    from torch import nn
    from poolbench.models import PoolSite, place, register_model

    def construct():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
                             nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def swap(model, make):
        sites, channels = [], None
        for index, layer in enumerate(model):
            if isinstance(layer, nn.Conv2d):
                channels = layer.out_channels
            elif isinstance(layer, nn.MaxPool2d):
                site = PoolSite(str(index), channels, 2, 2, 0, "tiny")
                model[index] = place(make, site)
                sites.append(site)
        return sites

    register_model("plugin_tinynet", "TinyNet", construct, swap)
'''

METRIC_FILE = '''
    from poolbench import models
    from poolbench.metrics import Column, Quantity, metric

    @metric("pooler_count", scopes=("network",), columns=(Column("poolers placed", ("pooler_count",), "int"),))
    def pooler_count(subject):
        """How many pooling layers the network got."""
        return [Quantity("pooler_count", len(models.pooler_modules(subject.module)), "layers")]
'''


def test_a_new_network_is_one_file(monkeypatch, tmp_path):
    assert load_plugin_file(monkeypatch, tmp_path, "poolbench_plugin_tinynet", NETWORK_FILE) == {}

    assert "plugin_tinynet" in models.names() and models.title("plugin_tinynet") == "TinyNet"
    model = models.build("plugin_tinynet", "dpp_lite_sym", tier="vectorized")
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert [site.channels for site in models.pool_sites("plugin_tinynet")] == [8, 16]
    assert models.param_overhead_analytic("plugin_tinynet", "dpp_lite_sym") == 2 * (8 + 16)
    assert [shape for _, shape in models.layer_input_shapes("plugin_tinynet", 1, 16)] == [(1, 8, 16, 16), (1, 16, 8, 8)]
    # the per-layer benchmark knows its pooling layers without a shape table
    assert shapes.pool_layers("plugin_tinynet", 1, 16) == [((1, 8, 16, 16), (2, 2, 0)), ((1, 16, 8, 8), (2, 2, 0))]
    # a network with only the paper's placement runs under --placement both, measured once, under its bare name
    config = runner.RunConfig(models=("plugin_tinynet",), poolers=("dpp_lite_sym",), tiers=("vectorized",),
                              metrics=("params",), batch=1, resolution=16, out=tmp_path, placement="both")
    assert config.models == ("plugin_tinynet",)
    result = sweep.run(config, progress=False)
    assert result.errors == 0
    assert "## TinyNet" in result.report.read_text()


def test_a_new_metric_is_one_file(monkeypatch, tmp_path):
    assert load_plugin_file(monkeypatch, tmp_path, "poolbench_plugin_metric", METRIC_FILE) == {}

    result = sweep.run(runner.RunConfig(models=("vgg16",), poolers=("max",), tiers=("vectorized",),
                                         metrics=("pooler_count",), batch=1, resolution=32, layers=False,
                                         out=tmp_path), progress=False)
    assert result.errors == 0
    report = result.report.read_text()
    assert "poolers placed" in report  # the report shows it from the metric's own column declaration
    rows = [line.split("|") for line in report.splitlines() if line.startswith("| max[")]
    header = next(line.split("|") for line in report.splitlines() if "poolers placed" in line)
    column = [cell.strip() for cell in header].index("poolers placed")
    assert {row[1].strip(): row[column].strip() for row in rows} == {"max[torchvision]": "0", "max[vectorized]": "5"}
