"""The ``poolbench_dpp`` op family: fake kernels, autograd, Python front end.

Layout (as torchvision's ops): ``csrc/dpp.cpp`` declares the schema once
(``poolbench_dpp::dpp_forward`` and ``poolbench_dpp::dpp_backward``);
``csrc/cpu/dpp_kernel.cpp`` and ``csrc/cuda/dpp_kernel.cu`` each register only
their own dispatch key; both include ``csrc/dpp_math.h``, the per-window maths,
so the formulas the GPU runs are the ones the CPU tests check.  This file
registers the fake kernels and the autograd formula (backward is its own op).

Building is lazy and lives in :mod:`impls.dpp_ext.build` (cache, compiler,
one-line failure reasons); :func:`load_cpu` / :func:`load_cuda` build on first
use and then register the Python side.
"""
from __future__ import annotations

import functools

import torch

from .build import (
    CSRC,
    CUDA_SOURCES,
    HEADERS,
    SCHEMA_SOURCES,
    build_directory,
    cpu_unavailable_reason,
    cuda_unavailable_reason,
    load_cpu_library,
    load_cuda_library,
)

__all__ = [
    "CSRC",
    "CUDA_MAX_KERNEL_SIZE",
    "CUDA_SOURCES",
    "HEADERS",
    "SCHEMA_SOURCES",
    "build_directory",
    "cpu_unavailable_reason",
    "cuda_unavailable_reason",
    "dpp",
    "load_cpu",
    "load_cuda",
]

#: The CUDA kernel keeps a window in registers/local memory; larger windows are refused with a reason.
CUDA_MAX_KERNEL_SIZE = 8

_FAKE_REGISTERED = False


@functools.cache
def load_cpu() -> None:
    """Build (once, cached) and load the schema + CPU kernel; register fake and autograd."""
    load_cpu_library()
    _register_python_kernels()


@functools.cache
def load_cuda() -> None:
    """Build (once, cached) and load the CUDA kernel (the schema comes from the CPU library)."""
    load_cpu()
    load_cuda_library()


# ---------------------------------------------------------------------------
# Fake kernels and autograd (registered once, after the library is loaded)
# ---------------------------------------------------------------------------

def _pooled(size: int, kernel_size: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel_size) // stride + 1


def _register_python_kernels() -> None:
    global _FAKE_REGISTERED
    if _FAKE_REGISTERED:
        return
    _FAKE_REGISTERED = True

    @torch.library.register_fake("poolbench_dpp::dpp_forward")
    def _forward_fake(x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant):
        n, c, h, w = x.shape
        return x.new_empty((n, c, _pooled(h, kernel_size, stride, padding), _pooled(w, kernel_size, stride, padding)))

    @torch.library.register_fake("poolbench_dpp::dpp_backward")
    def _backward_fake(grad, x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant):
        g_weight = weight.new_empty(weight.shape) if weight is not None else alpha.new_empty((0,))
        g_bias = bias.new_empty(bias.shape) if bias is not None else alpha.new_empty((0,))
        return x.new_empty(x.shape), alpha.new_empty(alpha.shape), lam.new_empty(lam.shape), g_weight, g_bias

    def setup_context(ctx, inputs, output):
        x, alpha, lam, weight, bias, *config = inputs
        # Only the input (and the per-channel parameters) are kept: backward recomputes the weights.
        ctx.save_for_backward(x, alpha, lam, weight, bias)
        ctx.config = config

    def backward(ctx, grad):
        x, alpha, lam, weight, bias = ctx.saved_tensors
        g_x, g_alpha, g_lam, g_weight, g_bias = torch.ops.poolbench_dpp.dpp_backward(
            grad, x, alpha, lam, weight, bias, *ctx.config
        )
        if weight is None:
            g_weight = g_bias = None
        return g_x, g_alpha, g_lam, g_weight, g_bias, None, None, None, None, None, None

    torch.library.register_autograd("poolbench_dpp::dpp_forward", backward, setup_context=setup_context)


# ---------------------------------------------------------------------------
# Front end
# ---------------------------------------------------------------------------

_LOADERS = {"cpu": load_cpu, "cuda": load_cuda}
#: Set once a library is loaded; a plain flag so torch.compile traces straight past the loader.
_LOADED = {"cpu": False, "cuda": False}


@torch.compiler.disable  # building is not traceable (and happens at most once per process)
def _ensure_loaded(device_type: str) -> None:
    _LOADERS[device_type]()
    _LOADED[device_type] = True


def dpp(x, alpha, lam, kernel_size, stride, padding, asym, guide, eps2, scale_invariant, *, device_type: str):
    """Run the fused op for an already validated input on ``device_type`` ("cpu" or "cuda").

    Same arguments as every DPP tier kernel (see :mod:`poolbench.dpp`).
    """
    if x.device.type != device_type:
        tier = "cpp" if device_type == "cpu" else "cuda"
        raise ValueError(f"the {tier} DPP tier runs on {device_type} tensors, got a tensor on {x.device}")
    if device_type == "cuda" and kernel_size > CUDA_MAX_KERNEL_SIZE:
        raise ValueError(
            f"the cuda DPP tier supports kernel_size <= {CUDA_MAX_KERNEL_SIZE} (window kept in registers), "
            f"got {kernel_size}; use the vectorized tier"
        )
    if not _LOADED[device_type]:
        _ensure_loaded(device_type)
    weight, bias = guide if guide is not None else (None, None)
    return torch.ops.poolbench_dpp.dpp_forward(
        x, alpha, lam, weight, bias, int(kernel_size), int(stride), int(padding), bool(asym), float(eps2),
        bool(scale_invariant),
    )
