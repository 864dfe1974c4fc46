"""The ``torch.library`` layer shared by the fused DPP tiers (cpp, cuda, triton).

Each fused tier exposes one op family, in its own namespace (``poolbench_dpp``
for the C++/CUDA kernels, ``poolbench_triton`` for the Triton ones), with the
same two ops::

    <ns>::dpp_forward(x, alpha, lam, weight?, bias?, kernel_size, stride, padding, asym, eps2,
                      scale_invariant) -> y
    <ns>::dpp_backward(grad, x, alpha, lam, weight?, bias?, ...same settings) ->
                      (grad_x, grad_alpha, grad_lam, grad_weight, grad_bias)

``weight``/``bias`` are Full-DPP's guide (F, b), ``None`` for Lite-DPP, whose
backward returns empty ``(0,)`` tensors (alpha's dtype) in their place.  This
module registers, once per namespace, the fake (meta) kernels of both ops and
the forward's autograd formula, and is the one place that calls the forward op
with a :class:`~poolbench.dpp.DPPArgs` — as torchvision keeps its ops' meta
kernels and autograd in Python beside per-backend kernels.

Autograd saves only the inputs (backward recomputes the weights).  The fused
backward op is not itself differentiable, so when backward runs with grad mode
on (``create_graph=True``: gradient penalties, ``gradgradcheck``), the first
derivatives are computed instead as the vector-Jacobian product of a
differentiable formula of the same maths (the vectorized tier, given at
registration).  Second derivatives are then exact, never a silent zero.
"""
from __future__ import annotations

import torch

from .dpp import DPPArgs, DPPKernel

__all__ = ["call_forward", "register_dpp_op"]

_REGISTERED: set[str] = set()


def call_forward(namespace: str, x, alpha, lam, guide, args: DPPArgs) -> torch.Tensor:
    """Run ``<namespace>::dpp_forward`` on validated input; a DPP tier kernel body for any fused tier."""
    weight, bias = guide if guide is not None else (None, None)
    return getattr(torch.ops, namespace).dpp_forward(x, alpha, lam, weight, bias, *args.op_arguments())


def register_dpp_op(namespace: str, differentiable: DPPKernel) -> None:
    """Register fake kernels for both ops of ``namespace`` and autograd for its forward (idempotent).

    ``differentiable`` is a DPP tier kernel written in differentiable torch
    ops; it only runs for double backward.  The ops themselves must already be
    defined (C++ schema loaded, or ``torch.library.custom_op`` executed).
    """
    if namespace in _REGISTERED:
        return
    torch.library.register_fake(f"{namespace}::dpp_forward")(_forward_fake)
    torch.library.register_fake(f"{namespace}::dpp_backward")(_backward_fake)
    torch.library.register_autograd(
        f"{namespace}::dpp_forward", _make_backward(namespace, differentiable), setup_context=_setup_context
    )
    _REGISTERED.add(namespace)


def _forward_fake(x, alpha, lam, weight, bias, *settings):
    return x.new_empty(DPPArgs(*settings).pooled_shape(x.shape))


def _backward_fake(grad, x, alpha, lam, weight, bias, *settings):
    g_weight = alpha.new_empty((0,)) if weight is None else weight.new_empty(weight.shape)
    g_bias = alpha.new_empty((0,)) if bias is None else bias.new_empty(bias.shape)
    return (torch.empty_like(x, memory_format=torch.contiguous_format), alpha.new_empty(alpha.shape),
            lam.new_empty(lam.shape), g_weight, g_bias)


def _setup_context(ctx, inputs, output):
    x, alpha, lam, weight, bias, *settings = inputs
    # Only the input and the per-channel parameters are kept: backward recomputes the weights.
    ctx.save_for_backward(x, alpha, lam, weight, bias)
    ctx.args = DPPArgs(*settings)


def _make_backward(namespace: str, differentiable: DPPKernel):
    backward_op = getattr(torch.ops, namespace).dpp_backward

    def backward(ctx, grad):
        x, alpha, lam, weight, bias = ctx.saved_tensors
        saved = (x, alpha, lam, weight, bias)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (grad, *saved)):
            grads = _differentiable_vjp(differentiable, grad, saved, ctx.args)
        else:
            grads = backward_op(grad, *saved, *ctx.args.op_arguments())
            if weight is None:
                grads = (*grads[:3], None, None)
        return (*grads, *([None] * len(ctx.args.op_arguments())))

    return backward


def _differentiable_vjp(differentiable: DPPKernel, grad, saved, args: DPPArgs):
    """First derivatives that are themselves differentiable w.r.t. the saved inputs and ``grad``.

    ``torch.func.vjp`` takes the local vector-Jacobian product only, so an
    input that also feeds another input upstream (α used to build x, say)
    is not counted twice, as ``torch.autograd.grad`` through the whole graph would.
    """
    x, alpha, lam, weight, bias = saved
    full = weight is not None

    def formula(x, alpha, lam, *guide):
        return differentiable(x, alpha, lam, tuple(guide) if full else None, args)

    primals = (x, alpha, lam, weight, bias) if full else (x, alpha, lam)
    _, vjp = torch.func.vjp(formula, *primals)
    grads = vjp(grad)
    return grads if full else (*grads, None, None)
