"""The ``torch.library`` layer shared by the fused DPP tiers (cpp, cuda, triton).

Each fused tier exposes one op family, in its own namespace (``poolbench_dpp``
for the C++/CUDA kernels, ``poolbench_triton`` for the Triton ones), with the
same two ops::

    <ns>::dpp_forward(x, alpha, lam, weight?, bias?, kernel_size, stride, padding, asym, eps2,
                      scale_invariant[, log_params]) -> y
    <ns>::dpp_backward(grad, x, alpha, lam, weight?, bias?, ...same settings) ->
                      (grad_x, grad_alpha, grad_lam, grad_weight, grad_bias)

``weight``/``bias`` are Full-DPP's guide (F, b), ``None`` for Lite-DPP, whose
backward returns empty ``(0,)`` tensors (alpha's dtype) in their place.  A
family registered with ``log_params=True`` takes the trailing ``log_params``
flag: then ``alpha``/``lam`` are ``ln α``/``ln λ`` as the module stores them,
the kernels exponentiate per channel and return gradients w.r.t. the logs, so
a module call is one op (no ``exp`` or chain-rule ``mul`` around it).

This module registers, once per namespace, the fake (meta) kernels and either
the forward's autograd kernel in Python (``poolbench_triton``) or, for a family
whose autograd kernel is C++ (``cpp_autograd=True``: ``poolbench_dpp``), the
``dpp_backward_differentiable`` op that the C++ backward runs for double
backward.  It is the one place that calls the forward op with a
:class:`~poolbench.dpp.DPPArgs`.

The Python autograd kernel is a plain ``torch.autograd.Function`` registered
at the ``Autograd`` key, not ``torch.library.register_autograd``: the function
that generates rebuilds the op's defaulted arguments from its schema on every
recorded call, which cost most of a small layer's train step on the host.
The bound fast path (:func:`bound_forward`, a module's validated call) goes one
step further for such a family and does not enter that kernel at all: it
applies the same function itself, or, with nothing to record, dispatches the op
below autograd.  Either way exactly the forward op (and in backward the
backward op) reaches the dispatcher, as the cpp family's C++ autograd does.

Autograd saves only the inputs (backward recomputes the weights).  The fused
backward op is not itself differentiable, so when backward runs with grad mode
on (``create_graph=True``: gradient penalties, ``gradgradcheck``), the first
derivatives are computed instead as the vector-Jacobian product of a
differentiable formula of the same maths (the vectorized tier, given at
registration).  Second derivatives are then exact, never a silent zero.
"""
from __future__ import annotations

import dataclasses
import functools

import torch

from .dpp import DPPArgs, DPPKernel

__all__ = ["bound_forward", "call_forward", "keeps_channels_last", "register_dpp_op"]

_REGISTERED: set[str] = set()
#: families whose forward's autograd is :class:`_FusedDPP` (not C++), by namespace
_PYTHON_AUTOGRAD: dict[str, "_Family"] = {}
#: the libraries holding those autograd kernels (a dropped Library object unregisters its kernels)
_LIBRARIES: list = []
_AFTER_AUTOGRAD = torch._C._after_autograd_keyset
#: namespaces whose ops take the trailing ``log_params`` flag
_LOG_PARAMS: set[str] = set()


def _direct_call(op):
    """What calling the OpOverload ``op`` runs, without ``OpOverload.__call__``'s Python frame.

    ``__call__`` only forwards to the C++ dispatch handle ``op._op`` (unless torch ≥ 2.14 attached a
    Python-object dispatcher, as ``torch.library.custom_op`` does; these ops have none): the same
    dispatcher entry, so dispatch modes, the profiler and autocast see the call as before, ~0.35 µs
    sooner, on a host path of ~14 µs.  Anything else falls back to ``op`` itself.
    """
    handle = getattr(op, "_op", None)
    if getattr(op, "_pyobj_dispatcher", None) is None and callable(handle):
        return handle
    return op


def call_forward(namespace: str, x, alpha, lam, guide, args: DPPArgs) -> torch.Tensor:
    """Run ``<namespace>::dpp_forward`` on validated input; a DPP tier kernel body for any fused tier.

    ``args.log_params`` (alpha, lam hold the logs) needs a family registered with ``log_params=True``.
    """
    weight, bias = guide if guide is not None else (None, None)
    op = getattr(torch.ops, namespace).dpp_forward.default
    if namespace in _LOG_PARAMS:
        return op(x, alpha, lam, weight, bias, *args.op_arguments(), args.log_params)
    if args.log_params:
        raise ValueError(f"{namespace}::dpp_forward takes alpha and lam, not their logs")
    return op(x, alpha, lam, weight, bias, *args.op_arguments())


def bound_forward(namespace: str, args: DPPArgs):
    """``run(x, alpha, lam, guide)`` calling ``<namespace>::dpp_forward`` with ``args`` fixed: a fused tier's
    bound fast path, for inputs its caller checked once (the op's overload and settings looked up here, not
    per call).

    For a family whose autograd formula is Python (not ``cpp_autograd``) the call skips the op's
    autograd kernel, a Python layer that would only decide what ``run`` decides here: with nothing to
    record it dispatches the op below autograd; with something to record it applies the family's
    autograd function (the same one the registered kernel applies) straight away.  Under a functorch
    transform it calls the op as is (the transform's own dispatch key must see it).
    """
    op = _direct_call(getattr(torch.ops, namespace).dpp_forward.default)
    settings = (*args.op_arguments(), bool(args.log_params))
    family = _PYTHON_AUTOGRAD.get(namespace)
    if family is None:  # the autograd kernel is C++: nothing to skip

        def run(x, alpha, lam, guide):
            if guide is None:
                return op(x, alpha, lam, None, None, *settings)
            return op(x, alpha, lam, guide[0], guide[1], *settings)

        return run

    apply, grad_enabled, any_requires_grad = _FusedDPP.apply, torch.is_grad_enabled, torch._C._any_requires_grad
    call = (family, None, settings)
    below_autograd, transforms_active = torch._C._AutoDispatchBelowAutograd, torch._C._are_functorch_transforms_active

    def run(x, alpha, lam, guide):
        weight, bias = guide if guide is not None else (None, None)
        if transforms_active():
            return op(x, alpha, lam, weight, bias, *settings)
        if grad_enabled() and any_requires_grad(x, alpha, lam, weight, bias):
            return apply(call, x, alpha, lam, weight, bias)
        with below_autograd():
            return op(x, alpha, lam, weight, bias, *settings)

    return run


def register_dpp_op(namespace: str, differentiable: DPPKernel, *, log_params: bool = False,
                    cpp_autograd: bool = False, channels_last_devices: tuple[str, ...] = ()) -> None:
    """Register the Python side of ``namespace``'s ops (idempotent).

    ``differentiable`` is a DPP tier kernel written in differentiable torch
    ops; it only runs for double backward.  The ops themselves must already be
    defined (C++ schema loaded, or ``torch.library.custom_op`` executed).
    ``log_params``: the ops take the trailing ``log_params`` flag (see the
    module docstring).  ``cpp_autograd``: the forward's autograd kernel is
    registered in C++ and calls ``<ns>::dpp_backward_differentiable`` for
    double backward, which this registers (CompositeImplicitAutograd);
    otherwise the forward's autograd formula is registered here.
    ``channels_last_devices``: device types ("cpu") whose kernels return a channels-last output
    and input gradient for a channels-last input (see :func:`keeps_channels_last`); elsewhere
    the kernels return NCHW, and the fake kernels say so.
    """
    if namespace in _REGISTERED:
        return
    if log_params:
        _LOG_PARAMS.add(namespace)
    devices = frozenset(channels_last_devices)
    torch.library.register_fake(f"{namespace}::dpp_forward")(functools.partial(_forward_fake, devices))
    torch.library.register_fake(f"{namespace}::dpp_backward")(functools.partial(_backward_fake, devices))
    if cpp_autograd:
        torch.library.impl(f"{namespace}::dpp_backward_differentiable", "CompositeImplicitAutograd")(
            _make_differentiable_backward(differentiable))
    else:
        family = _PYTHON_AUTOGRAD[namespace] = _Family(namespace, differentiable)
        _LIBRARIES.append(library := torch.library.Library(namespace, "IMPL"))
        library.impl("dpp_forward", _autograd_kernel(family), "Autograd", with_keyset=True)
    _REGISTERED.add(namespace)


def _make_differentiable_backward(differentiable: DPPKernel):
    def dpp_backward_differentiable(grad, x, alpha, lam, weight, bias, *settings):
        grads = _differentiable_vjp(differentiable, grad, (x, alpha, lam, weight, bias), DPPArgs(*settings))
        if weight is None:  # the op family's contract: Lite-DPP placeholders in α's dtype
            grads = (*grads[:3], alpha.new_empty((0,)), alpha.new_empty((0,)))
        return grads

    return dpp_backward_differentiable


def keeps_channels_last(x: torch.Tensor, devices) -> bool:
    """Whether a kernel on one of ``devices`` returns channels-last y and ∂x for input ``x``.

    The rule of the CPU kernel's NHWC path (``nhwc_path_applies`` in
    ``impls/dpp_ext/csrc/cpu/dpp_kernel_nhwc.h``): x is 4-D, channels-last contiguous and not
    NCHW contiguous (C > 1 and H·W > 1; otherwise both layouts are the same).
    """
    return (x.device.type in devices and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous())


def _memory_format(x, devices) -> torch.memory_format:
    return torch.channels_last if keeps_channels_last(x, devices) else torch.contiguous_format


def _forward_fake(devices, x, alpha, lam, weight, bias, *settings):
    return torch.empty(DPPArgs(*settings).pooled_shape(x.shape), dtype=x.dtype, device=x.device,
                       memory_format=_memory_format(x, devices))


def _backward_fake(devices, grad, x, alpha, lam, weight, bias, *settings):
    g_weight = alpha.new_empty((0,)) if weight is None else weight.new_empty(weight.shape)
    g_bias = alpha.new_empty((0,)) if bias is None else bias.new_empty(bias.shape)
    return (torch.empty_like(x, memory_format=_memory_format(x, devices)), alpha.new_empty(alpha.shape),
            lam.new_empty(lam.shape), g_weight, g_bias)


class _Family:
    """What the Python autograd of one op family needs: its two ops and the differentiable formula."""

    def __init__(self, namespace: str, differentiable: DPPKernel):
        ops = getattr(torch.ops, namespace)
        self.forward, self.backward = ops.dpp_forward.default, ops.dpp_backward.default
        self.run_forward, self.run_backward = _direct_call(self.forward), _direct_call(self.backward)
        self.differentiable = differentiable


class _FusedDPP(torch.autograd.Function):
    """The forward op's autograd formula: the fused backward op, or the differentiable VJP for double backward.

    A plain :class:`torch.autograd.Function` rather than ``torch.library.register_autograd``, whose
    generated function rebuilds the op's defaults from its schema and a metadata record on every call
    (most of a small layer's train step on the host).  ``call`` is one non-tensor argument
    ``(family, keyset, settings)``: the op family, the dispatch keys left to run below autograd (from
    the op's autograd kernel) or None (from the bound fast path, which builds ``call`` once: a fresh call
    below autograd), and the op's trailing arguments.  Only the inputs are saved.
    """

    @staticmethod
    def forward(ctx, call, x, alpha, lam, weight, bias):
        family, keyset, settings = call
        with torch._C._AutoDispatchBelowAutograd():
            if keyset is None:
                y = family.run_forward(x, alpha, lam, weight, bias, *settings)
            else:
                y = family.forward.redispatch(keyset & _AFTER_AUTOGRAD, x, alpha, lam, weight, bias, *settings)
        # Only the input and the per-channel parameters are kept: backward recomputes the weights.
        ctx.save_for_backward(x, alpha, lam, weight, bias)
        ctx.call = call
        return y

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        family, _, settings = ctx.call
        if torch.is_grad_enabled() and torch._C._any_requires_grad(grad, *saved):
            grads = _differentiable_vjp(family.differentiable, grad, saved, DPPArgs(*settings))
        else:
            grads = family.run_backward(grad, *saved, *settings)
            if saved[3] is None:  # Lite-DPP: the op's placeholders are no gradients
                grads = (*grads[:3], None, None)
        return None, *grads


def _autograd_kernel(family: _Family):
    """The forward op's Autograd-key kernel: record through :class:`_FusedDPP` only when there is a graph to build."""
    apply, redispatch = _FusedDPP.apply, family.forward.redispatch

    def dpp_forward_autograd(keyset, x, alpha, lam, weight, bias, *settings):
        if torch.is_grad_enabled() and torch._C._any_requires_grad(x, alpha, lam, weight, bias):
            return apply((family, keyset, settings), x, alpha, lam, weight, bias)
        with torch._C._AutoDispatchBelowAutograd():
            return redispatch(keyset & _AFTER_AUTOGRAD, x, alpha, lam, weight, bias, *settings)

    return dpp_forward_autograd


def _differentiable_vjp(differentiable: DPPKernel, grad, saved, args: DPPArgs):
    """First derivatives that are themselves differentiable w.r.t. the saved inputs and ``grad``.

    ``torch.func.vjp`` takes the local vector-Jacobian product only, so an
    input that also feeds another input upstream (α used to build x, say)
    is not counted twice, as ``torch.autograd.grad`` through the whole graph would.
    """
    x, alpha, lam, weight, bias = saved
    full = weight is not None
    log_params = args.log_params
    args = dataclasses.replace(args, log_params=False)

    def formula(x, alpha, lam, *guide):
        if log_params:  # derivatives w.r.t. the logs, as the fused op returns them
            alpha, lam = alpha.exp(), lam.exp()
        return differentiable(x, alpha, lam, tuple(guide) if full else None, args)

    primals = (x, alpha, lam, weight, bias) if full else (x, alpha, lam)
    _, vjp = torch.func.vjp(formula, *primals)
    grads = vjp(grad)
    return grads if full else (*grads, None, None)
