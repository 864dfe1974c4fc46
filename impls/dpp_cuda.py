"""DPP cuda tier: the fused CUDA kernel of the ``poolbench_dpp`` op family.

Same op and the same per-window maths (``impls/dpp_ext/csrc/dpp_math.h``) as
the cpp tier, one thread per output window; backward recomputes the weights and
reduces the per-channel gradients deterministically.  JIT-built with nvcc on
the first call (needs a CUDA build of torch and a CUDA toolkit) and cached.
"""
from __future__ import annotations

from impls.dpp_ext import ops
from poolbench.dpp import register_dpp_tier


def dpp_cuda(x, alpha, lam, kernel_size, stride, padding, asym, guide, eps2, scale_invariant):
    return ops.dpp(x, alpha, lam, kernel_size, stride, padding, asym, guide, eps2, scale_invariant, device_type="cuda")


register_dpp_tier(
    "cuda",
    dpp_cuda,
    devices=("cuda",),
    available=ops.cuda_unavailable_reason,
    priority={"cuda": 50},
    description="fused CUDA kernel (torch.library op, JIT-built with nvcc)",
    op_namespaces=("poolbench_dpp",),
)
