"""DPP cpp tier: the fused C++ CPU kernel of the ``poolbench_dpp`` op family.

One pass per window (guide, log-domain weights, normalised weighted sum) in
OpenMP-parallel, vectorised C++; backward is its own fused op that recomputes
the weights, so training keeps only the input.  The library is JIT-built on the
first call (a C++ compiler and ninja are needed; no nvcc) and cached.
"""
from __future__ import annotations

from impls.dpp_ext import ops
from poolbench.dpp import register_dpp_tier


def dpp_cpp(x, alpha, lam, kernel_size, stride, padding, asym, guide, eps2, scale_invariant):
    return ops.dpp(x, alpha, lam, kernel_size, stride, padding, asym, guide, eps2, scale_invariant, device_type="cpu")


register_dpp_tier(
    "cpp",
    dpp_cpp,
    devices=("cpu",),
    available=ops.cpu_unavailable_reason,
    priority={"cpu": 50},
    description="fused C++ CPU kernel (torch.library op, JIT-built)",
    op_namespaces=("poolbench_dpp",),
)
