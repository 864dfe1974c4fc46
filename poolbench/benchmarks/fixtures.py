"""The ``--device`` / ``--dtype`` options and fixtures shared by poolbench's test suite and the gate's suite.

One definition, so ``pytest --device cuda`` means the same in both; each
suite's ``conftest.py`` calls :func:`add_device_options` and imports the fixtures.
"""
from __future__ import annotations

import pytest
import torch

from ..tolerances import DTYPES

__all__ = ["add_device_options", "device", "dtype"]


def add_device_options(parser) -> None:
    """Add ``--device`` and ``--dtype`` unless a conftest loaded earlier in the session already did."""
    for flag, kwargs in (("--device", dict(default="cpu", choices=("cpu", "cuda"), help="device the tiers run on")),
                         ("--dtype", dict(default="float32", choices=tuple(DTYPES),
                                          help="dtype of fast-tier comparisons and benchmark inputs"))):
        try:
            parser.addoption(flag, **kwargs)
        except ValueError:  # both suites collected in one session: the first definition stands
            pass


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda given but CUDA is not available on this machine")
    return torch.device(name)


@pytest.fixture(scope="session")
def dtype(request) -> torch.dtype:
    return DTYPES[request.config.getoption("--dtype")]
