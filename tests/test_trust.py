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


def _row(metric="params", quantity="params", value=1.0, status="ok", model="vgg16", pooler="avg"):
    return Row(model, pooler, "vectorized", "network", "", "1x3x32x32", metric, quantity, value, "count", status)


def _env(batch=1, resolution=32):
    return results.environment("cpu", torch.float32, batch, resolution, timing="t")


def _write(stem, cells, *, resume=False, env=None):
    with results.ResultsWriter(stem, env or _env(), resume=resume) as writer:
        for rows in cells:
            writer.write(rows)
    return writer


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
