"""The ``poolbench_dpp`` op family: loading, fake kernels and autograd, Python front end.

Layout (as torchvision's ops): ``csrc/dpp.cpp`` declares the schema once
(``poolbench_dpp::dpp_forward`` and ``poolbench_dpp::dpp_backward``);
``csrc/cpu/dpp_kernel.cpp`` and ``csrc/cuda/dpp_cuda.cu`` each register only
their own dispatch key; both include ``csrc/dpp_math.h``, the per-window maths,
so the formulas the GPU runs are the ones the CPU tests check.  The autograd
kernel is C++ too (``csrc/dpp_autograd.cpp``); the fake kernels and the
differentiable backward it runs for double backward are registered by
:mod:`poolbench.dpp_custom_op`, shared with the triton tier.  The ops take the
module's stored ``ln α``, ``ln λ`` (``log_params=True``) or, from the
functional form, α and λ themselves.

Building is lazy and lives in :mod:`poolbench.impls.dpp_ext.build` (cache, compiler,
one-line failure reasons); :func:`load_cpu` / :func:`load_cuda` build on first
use and then register the Python side.
"""
from __future__ import annotations

import functools

import torch

from poolbench.impls.dpp_vectorized import dpp_vectorized
from poolbench.dpp import DPPArgs
from poolbench.dpp_custom_op import bound_forward, call_forward, register_dpp_op

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
    "NAMESPACE",
    "SCHEMA_SOURCES",
    "build_directory",
    "cpu_unavailable_reason",
    "cuda_unavailable_reason",
    "FusedKernel",
    "dpp",
    "load_cpu",
    "load_cuda",
]

#: The CUDA kernel keeps a window in registers/local memory; larger windows are refused with a reason.
CUDA_MAX_KERNEL_SIZE = 8

#: The op family's namespace (schema in csrc/dpp.cpp).
NAMESPACE = "poolbench_dpp"


@functools.cache
def load_cpu() -> None:
    """Build (once, cached) and load the schema + CPU kernel; register fake and autograd."""
    load_cpu_library()
    # The CPU kernel keeps a channels-last input channels-last (its NHWC path); the CUDA kernel copies to NCHW.
    register_dpp_op(NAMESPACE, dpp_vectorized, log_params=True, cpp_autograd=True, channels_last_devices=("cpu",))


@functools.cache
def load_cuda() -> None:
    """Build (once, cached) and load the CUDA kernel (the schema comes from the CPU library)."""
    load_cpu()
    load_cuda_library()


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


def _check_call(x, args: DPPArgs, device_type: str) -> None:
    if x.device.type != device_type:
        tier = "cpp" if device_type == "cpu" else "cuda"
        raise ValueError(f"the {tier} DPP tier runs on {device_type} tensors, got a tensor on {x.device}")
    if device_type == "cuda" and args.kernel_size > CUDA_MAX_KERNEL_SIZE:
        raise ValueError(
            f"the cuda DPP tier supports kernel_size <= {CUDA_MAX_KERNEL_SIZE} (window kept in registers), "
            f"got {args.kernel_size}; use the vectorized tier"
        )
    if not _LOADED[device_type]:
        _ensure_loaded(device_type)


def dpp(x, alpha, lam, guide, args: DPPArgs, *, device_type: str):
    """Run the fused op for an already validated input on ``device_type`` ("cpu" or "cuda").

    The DPP tier kernel of the cpp and cuda tiers (see :mod:`poolbench.dpp`); ``alpha``/``lam``
    are ln α, ln λ when ``args.log_params``.
    """
    _check_call(x, args, device_type)
    return call_forward(NAMESPACE, x, alpha, lam, guide, args)


class FusedKernel:
    """The DPP tier kernel of the cpp or cuda tier (``kernel(x, alpha, lam, guide, args)``).

    :meth:`bind` is the module's fast path: after one checked call for a (shape, dtype,
    device, settings) key, it returns ``run(x, alpha, lam, guide)`` that calls the op with the
    settings already laid out: per call, one Python function and the op.
    """

    takes_log_params = True

    def __init__(self, device_type: str):
        self.device_type = device_type

    def __call__(self, x, alpha, lam, guide, args: DPPArgs):
        return dpp(x, alpha, lam, guide, args, device_type=self.device_type)

    def bind(self, x, args: DPPArgs):
        """``run(x, alpha, lam, guide)`` for inputs like ``x`` (same device type), checked once here."""
        _check_call(x, args, self.device_type)
        return bound_forward(NAMESPACE, args)

    def __repr__(self) -> str:
        return f"FusedKernel({self.device_type!r})"
