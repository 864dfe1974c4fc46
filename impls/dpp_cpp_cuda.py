"""DPP cpp and cuda tiers: the two devices of the fused ``poolbench_dpp`` op family.

One op (``impls/dpp_ext``), one per-window maths header (``csrc/dpp_math.h``),
two kernels: ``cpp`` runs the OpenMP-parallel, vectorised C++ CPU kernel (needs
a C++ compiler and ninja), ``cuda`` the CUDA kernel, one thread per output
window with a deterministic per-channel reduction (needs nvcc and a CUDA build
of torch).  Both do one pass per window (guide, log-domain weights, normalised
weighted sum), and their backward op recomputes the weights, so training keeps
only the input.  Each library is JIT-built on its first call and cached.
"""
from __future__ import annotations

from poolbench.impls.dpp_ext import ops
from poolbench.dpp import register_dpp_tier

for tier, device_type, available, description in (
    ("cpp", "cpu", ops.cpu_unavailable_reason, "fused C++ CPU kernel (torch.library op, JIT-built)"),
    ("cuda", "cuda", ops.cuda_unavailable_reason, "fused CUDA kernel (torch.library op, JIT-built with nvcc)"),
):
    register_dpp_tier(tier, ops.FusedKernel(device_type), devices=(device_type,),
                      available=available, description=description, priority={device_type: 50},
                      op_namespaces=("poolbench_dpp",), takes_log_params=True)
