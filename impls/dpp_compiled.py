"""DPP compiled tier: the vectorized formulation under ``torch.compile``.

Each distinct (shape, dtype, variant) compiles once; the recompile budget is
raised so a whole network's pooling shapes (VGG-16 has five, ResNets up to
eight, times forward/backward and variants) fit without falling back to eager.
"""
from __future__ import annotations

import functools
import shutil
import sys

import torch

from poolbench.impls.dpp_vectorized import dpp_vectorized
from poolbench.dpp import register_dpp_tier

#: Distinct compiled specialisations kept per function before torch falls back to eager.
RECOMPILE_BUDGET = 64


def compile_unavailable_reason(device: str) -> str | None:
    """Why torch.compile cannot run here (inductor needs a C++ compiler on CPU, Triton on GPU)."""
    if sys.platform == "win32":
        return "torch.compile is not supported on Windows in this harness"
    if device == "cpu" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "torch.compile on CPU needs a C++ compiler (g++/clang++) on PATH"
    if device == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch.compile on CUDA needs triton, which is not installed"
    return None


@functools.cache
def _compiled():
    dynamo_config = torch._dynamo.config
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, knob):
            setattr(dynamo_config, knob, max(getattr(dynamo_config, knob), RECOMPILE_BUDGET))
    return torch.compile(dpp_vectorized, dynamic=False)


def dpp_compiled(x, alpha, lam, guide, args):
    return _compiled()(x, alpha, lam, guide, args)


register_dpp_tier(
    "compiled",
    dpp_compiled,
    available=compile_unavailable_reason,
    # below vectorized on CPU: its first call pays seconds of compilation
    priority={"cuda": 30, "cpu": 10},
    description="torch.compile of the vectorized tier",
)
