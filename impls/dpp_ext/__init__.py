"""Fused C++/CUDA DPP extension: the ``poolbench_dpp`` op family (see :mod:`impls.dpp_ext.ops`).

Importing this package builds nothing; the ``cpp`` and ``cuda`` tiers
(``impls/dpp_cpp_cuda.py``) build their library on first use.
"""
from .ops import cpu_unavailable_reason, cuda_unavailable_reason, dpp, load_cpu, load_cuda

__all__ = ["cpu_unavailable_reason", "cuda_unavailable_reason", "dpp", "load_cpu", "load_cuda"]
