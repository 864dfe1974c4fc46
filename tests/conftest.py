"""Shared fixtures: the same suite runs on CPU in CI and on a GPU when one is lent.

``pytest --device cuda --dtype float32`` reruns everything on the GPU; GPU-only
cases skip with a reason where CUDA is absent.
"""
from __future__ import annotations

import pytest
import torch
from poolbench import registry
from poolbench.benchmarks.fixtures import add_device_options, device, dtype  # noqa: F401  (fixtures)
from plugin_helpers import isolate_registries


def pytest_addoption(parser):
    add_device_options(parser)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def isolated_registries(monkeypatch):
    """Let a test register poolers, tiers, kernels, networks and metrics without leaking them into others.

    The in-tree plugins are loaded first, so the copies hold them and only what the test adds is undone.
    """
    registry.load_plugins()
    isolate_registries(monkeypatch)
    return registry


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
