"""DPP triton tier: fused Triton forward and backward kernels behind a ``torch.library`` custom op.

Two ops in the ``poolbench_triton`` namespace carry the whole tier:

* ``dpp_forward(x, alpha, lam, weight?, bias?, kernel_size, stride, padding, asym, eps2, scale_invariant,
  log_params=False) -> y``
* ``dpp_backward(grad, x, alpha, lam, weight?, bias?, ...) -> (grad_x, grad_alpha, grad_lam, grad_weight, grad_bias)``

With ``log_params`` (the modules' call) ``alpha``/``lam`` are the stored ln α, ln λ: the kernels form
log2 α and λ per channel and return the gradients w.r.t. the logs, so a module call dispatches this one
op (no ``exp`` before it, no chain-rule ``mul`` after its backward).  The functional form passes α and λ
themselves (λ = 0 included) with ``log_params`` False.

Their fake (meta) kernels and the forward's autograd formula (double backward
included) are registered by :mod:`poolbench.dpp_custom_op`, shared with the
cpp/cuda op family, so the tier works under ``torch.compile`` (the ops stay
opaque calls in the graph) and passes ``torch.library.opcheck``.
``weight``/``bias`` are the Full-DPP guide (F, b); for Lite-DPP they are None
and the backward returns empty tensors in their place.  Nothing but the inputs
is saved for backward: the backward kernels recompute the weights.

The kernels (``impls/dpp_triton_kernels.py``) are imported lazily, on first
use, for two reasons: the registry imports every plugin and must not pay for
(or fail on) Triton on machines without it, and Triton fixes at *kernel
definition* whether it compiles for the GPU or interprets on the CPU
(``TRITON_INTERPRET=1``).  On CPU the tier is therefore unavailable for normal
use; with ``TRITON_INTERPRET=1`` set before the first use it runs on CPU
tensors in the interpreter (slow; that is how the tests check it without a GPU).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

import torch
from torch import Tensor

from poolbench.impls.dpp_vectorized import dpp_vectorized
from poolbench.dpp import DPPArgs, register_dpp_tier
from poolbench.dpp_custom_op import bound_forward, call_forward, register_dpp_op

__all__ = ["dpp_backward", "dpp_forward", "dpp_triton", "interpreting", "triton_unavailable_reason"]

NAMESPACE = "poolbench_triton"
_KERNELS_MODULE = "poolbench.impls.dpp_triton_kernels"


def interpreting() -> bool:
    """Whether the kernels run (or, once imported, will run) in Triton's CPU interpreter."""
    module = sys.modules.get(_KERNELS_MODULE)
    if module is not None:
        return module.INTERPRET
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_unavailable_reason(device: str) -> str | None:
    """Why the triton tier cannot run on ``device`` (``None`` if it can)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (it ships with CUDA builds of torch; pip install triton)"
    if device == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available (torch.cuda.is_available() is False)"
        return None
    if device == "cpu":
        if interpreting():
            return None
        return ("the triton tier compiles for CUDA GPUs; on CPU it runs only in Triton's interpreter "
                "(set TRITON_INTERPRET=1 before first use; slow, meant for testing)")
    return f"the triton tier does not support device {device!r}"


_LOADED = None  # the kernel module once imported (an import statement per call costs a microsecond)


def _kernels(x: Tensor):
    """The kernel module, after checking that it can run on ``x``'s device."""
    kernels = _LOADED
    if kernels is not None and (x.is_cuda or (x.is_cpu and kernels.INTERPRET)):
        return kernels
    return _load_kernels(x)


def _load_kernels(x: Tensor):
    """:func:`_kernels` on its first call or for a device the tier refuses: import, then say why not."""
    global _LOADED
    try:
        from poolbench.impls import dpp_triton_kernels as kernels
    except ImportError as exc:
        raise RuntimeError(f"the triton DPP tier needs triton: {exc}") from exc
    _LOADED = kernels
    if x.device.type == "cpu" and not kernels.INTERPRET:
        raise ValueError(
            "the triton DPP tier got CPU tensors but its kernels were compiled for CUDA; move the input to a "
            "CUDA device, or set TRITON_INTERPRET=1 before the tier is first used to run it in Triton's interpreter"
        )
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"the triton DPP tier does not support device {x.device.type!r}")
    return kernels


def dpp_forward(x: Tensor, alpha: Tensor, lam: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                kernel_size: int, stride: int, padding: int, asym: bool, eps2: float,
                scale_invariant: bool, log_params: bool = False) -> Tensor:
    """DPP of x (N, C, H, W) → (N, C, OH, OW) in x's dtype; α, λ (C,) (or their logs); weight (C, 1, 3, 3), bias (C,) or None."""
    return _kernels(x).forward(x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2,
                               scale_invariant, log_params)


def dpp_backward(grad: Tensor, x: Tensor, alpha: Tensor, lam: Tensor, weight: Optional[Tensor],
                 bias: Optional[Tensor], kernel_size: int, stride: int, padding: int, asym: bool, eps2: float,
                 scale_invariant: bool, log_params: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (x, α, λ, weight, bias) as passed (the logs for ``log_params``); weight/bias grads are empty for Lite."""
    grads = _kernels(x).backward(grad, x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2,
                                 scale_invariant, log_params)
    if weight is None:  # the op family's contract: Lite-DPP placeholders in α's dtype (as the C++ op)
        grads = (*grads[:3], alpha.new_empty((0,)), alpha.new_empty((0,)))
    return grads


# The ops are defined with a schema and plain CPU/CUDA kernels (torch.library.Library) rather than
# torch.library.custom_op: the dispatcher then calls the kernel directly, without custom_op's per-call
# Python wrapper (default filling, output-alias checks: ≈10 µs a call).  The kernels return fresh,
# non-aliasing tensors; opcheck (tests) verifies the schema, fake kernels and autograd.
_SETTINGS = ("int kernel_size, int stride, int padding, bool asym, float eps2, bool scale_invariant, "
             "bool log_params=False")
_LIBRARY = torch.library.Library(NAMESPACE, "DEF")
_LIBRARY.define(f"dpp_forward(Tensor x, Tensor alpha, Tensor lam, Tensor? weight, Tensor? bias, {_SETTINGS}) -> Tensor")
_LIBRARY.define(f"dpp_backward(Tensor grad, Tensor x, Tensor alpha, Tensor lam, Tensor? weight, Tensor? bias, "
                f"{_SETTINGS}) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
for _key in ("CPU", "CUDA"):
    _LIBRARY.impl("dpp_forward", dpp_forward, _key)
    _LIBRARY.impl("dpp_backward", dpp_backward, _key)

register_dpp_op(NAMESPACE, dpp_vectorized, log_params=True)


class TritonKernel:
    """The DPP tier kernel of the triton tier (``kernel(x, alpha, lam, guide, args)``).

    It takes the modules' stored logs (``args.log_params``).  :meth:`bind` is the module's fast
    path: after one checked call for a (shape, dtype, device, settings) key it returns
    ``run(x, alpha, lam, guide)``, which calls the op with the settings already laid out.  The op
    itself finds the launch plan cached per shape (validated when it is built).
    """

    takes_log_params = True

    def __call__(self, x, alpha, lam, guide, args: DPPArgs):
        return call_forward(NAMESPACE, x, alpha, lam, guide, args)

    def bind(self, x, args: DPPArgs):
        """``run(x, alpha, lam, guide)`` for inputs like ``x``."""
        _kernels(x)  # the device check the op would make, once
        return bound_forward(NAMESPACE, args)

    def __repr__(self) -> str:
        return "TritonKernel()"


dpp_triton = TritonKernel()

register_dpp_tier(
    "triton",
    dpp_triton,
    available=triton_unavailable_reason,
    priority={"cuda": 40},  # on the CPU only Triton's interpreter runs it: never picked there
    description="fused Triton forward/backward kernels (torch.library custom op)",
    op_namespaces=("poolbench_triton",),
    takes_log_params=True,
)
