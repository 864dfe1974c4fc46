"""Shared fixtures: the same suite runs on CPU in CI and on a GPU when one is lent.

``pytest --device cuda --dtype float32`` reruns everything on the GPU; GPU-only
cases skip with a reason where CUDA is absent.
"""
from __future__ import annotations

import pytest
import torch
from poolbench.tolerances import DTYPES



def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"), help="device the tiers run on")
    parser.addoption("--dtype", default="float32", choices=tuple(DTYPES), help="dtype of fast-tier comparisons")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda given but CUDA is not available on this machine")
    return torch.device(name)


@pytest.fixture(scope="session")
def dtype(request) -> torch.dtype:
    return DTYPES[request.config.getoption("--dtype")]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
