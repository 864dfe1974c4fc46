"""The one equivalence harness: a tier and its float64 reference, same parameters, same input, compared.

``poolbench check``, the benchmark gate and the tier tests all prove a tier
equal to its pooler's reference the same way, so this is written once:

* :func:`build_pair` builds ``pooler[tier]`` and its reference tier
  (:func:`~poolbench.verify.equivalence.reference_tier`, float64 on the CPU) with
  the contract's perturbed parameters (:func:`~poolbench.verify.equivalence.perturb_parameters`),
  shared by loading one module's state into the other;
* :func:`run_pass` runs one module on an input and, when given an upstream
  gradient, collects the gradients of the input and of every parameter;
* :func:`judge` compares two passes by the one contract
  (:func:`~poolbench.verify.equivalence.compare`).

Callers differ only in *where* they compare (small odd shapes for ``check``,
the benchmark shape against a reference corner for the gate).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..registry import GradientRule
from ..stochastic import Seeded
from .equivalence import Verdict, compare, perturb_parameters, reference_tier

__all__ = ["PassOutputs", "build_pair", "judge", "run_call", "run_pass", "share_parameters"]


@dataclass
class PassOutputs:
    """One module's output (on the compared region) and the gradients of ``"input"`` and its parameters."""

    output: torch.Tensor
    grads: dict[str, torch.Tensor] = field(default_factory=dict)


def share_parameters(source: nn.Module, target: nn.Module) -> bool:
    """Load ``source``'s parameters and buffers into ``target`` (on ``target``'s device and dtype).

    Returns False when the two modules' layouts differ (the caller then relies
    on both having been built from the same seed).
    """
    reference = next(iter(target.state_dict().values()), None)
    try:
        state = {name: value.detach().to(device=reference.device if reference is not None else value.device)
                 for name, value in source.state_dict().items()}
        target.load_state_dict(state)
    except (RuntimeError, KeyError):
        return False
    return True


def build_pair(make: Callable[[str], nn.Module], pooler: str, tier: str, seed: int,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module]:
    """(``pooler[tier]`` on ``device``/``dtype``, its reference tier in float64 on the CPU), same parameters.

    ``make(tier)`` builds a fresh module of ``pooler`` for ``tier``; the
    reference gets the contract's perturbation (drawn from ``seed``) and the
    tier a copy of it.  ``ValueError`` from ``make`` (a case the pooler cannot
    take) propagates.
    """
    reference = make(reference_tier(pooler) or tier).double()
    perturb_parameters(reference, seed)
    candidate = make(tier)
    candidate.load_state_dict(reference.state_dict())
    return candidate.to(device=device, dtype=dtype), reference


def run_pass(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor | None = None,
             region: tuple = (...,)) -> PassOutputs:
    """``module(x)[region]`` and, given ``grad_out`` (the upstream gradient of that region), the gradients.

    ``x`` must require grad for its gradient to be collected; parameters
    without a gradient are left out.  A stochastic module is reseeded first, so
    two modules sharing a seed sample alike.
    """
    if isinstance(module, Seeded):
        module.reseed()
    out = module(x)[region]
    if grad_out is None:
        return PassOutputs(out.detach())
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    inputs = ([x] if x.requires_grad else []) + [p for _, p in named]
    grads = torch.autograd.grad(out, inputs, grad_out.to(device=out.device, dtype=out.dtype), allow_unused=True)
    names = (["input"] if x.requires_grad else []) + [name for name, _ in named]
    return PassOutputs(out.detach(), {name: g for name, g in zip(names, grads) if g is not None})


def run_call(fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor],
             grad_out: torch.Tensor | Callable[[torch.Size], torch.Tensor] | None = None) -> PassOutputs:
    """:func:`run_pass` for a function of named tensors (the functional form of a pooler).

    ``fn(**inputs)`` runs on fresh leaves; given ``grad_out`` (or a function of the output shape
    that makes it), the gradients are keyed by the input names (name the pooled input ``"input"``
    so it is judged element-wise, the parameters norm-wise).
    """
    differentiable = grad_out is not None
    leaves = {name: value.detach().clone().requires_grad_(differentiable) for name, value in inputs.items()}
    out = fn(**leaves)
    if not differentiable:
        return PassOutputs(out.detach())
    if callable(grad_out):
        grad_out = grad_out(out.shape)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out.to(device=out.device, dtype=out.dtype),
                                allow_unused=True)
    return PassOutputs(out.detach(), {name: g for name, g in zip(leaves, grads) if g is not None})


def judge(actual: PassOutputs, expected: PassOutputs, dtype: torch.dtype,
          rule: GradientRule = GradientRule()) -> Verdict:
    """The contract's verdict on a tier's pass against its reference's (a gradient on one side only fails).

    ``rule`` is the pooler's declared ``registry.PoolerSpec.gradient_rule``.
    """
    names = list(dict.fromkeys([*expected.grads, *actual.grads]))
    grads = [(name, actual.grads.get(name), expected.grads.get(name)) for name in names]
    return compare((actual.output, expected.output), grads, dtype, rule)
