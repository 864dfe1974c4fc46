"""The one equivalence contract: what "a tier equals its pooler's float64 reference" means.

``poolbench check``, the benchmark gate and the test tester all decide with
these rules, so they cannot disagree:

* the **reference tier** (:func:`reference_tier`) is ``reference`` when the
  pooler registers one, else its first tier that runs on the CPU, run in float64;
* both modules get the same **perturbed parameters** (:func:`perturb_parameters`),
  moved off their initial values (DPP's α = λ = 1, LIP's zero convolution, ...)
  so every per-channel gradient path is exercised rather than a special case;
* the **output** and the **gradient of the input** must agree element-wise
  within :mod:`poolbench.tolerances` ("output" and "grad" rows for the tier's dtype);
  a pooler may declare a looser :class:`~poolbench.registry.GradientRule` for its
  gradients (input gradient norm-wise per plane, a wider gradient tolerance) with
  the reason float32 cannot do better, which a failure message repeats;
* each **parameter gradient** must agree norm-wise (:func:`parameter_grad_error`):
  it sums over every batch element and position, so one entry that cancels to
  near zero carries a rounding error far above an element-wise bound while the
  gradient as a whole is accurate; a wrong formula still moves the norm by O(1).

Errors are reported in units of the tolerance: ≤ 1 passes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from .. import registry
from ..registry import GradientRule
from ..tolerances import tolerance

__all__ = ["PARAMETER_NOISE", "Verdict", "compare", "input_error", "parameter_grad_error", "perturb_parameters",
           "plane_grad_error", "reference_tier"]

#: Standard deviation of the noise added to every learned parameter before comparing.
PARAMETER_NOISE = 0.3


def reference_tier(pooler: str) -> str | None:
    """The tier ``pooler``'s other tiers are checked against, run in float64 on the CPU.

    The ``reference`` tier when registered; otherwise the first tier (in
    :func:`registry.known_tiers` order) that runs on the CPU.  ``None`` if none does.
    """
    candidates = registry.tiers(pooler)
    if "reference" in candidates:
        return "reference"
    for tier in candidates:
        if registry.get_spec(pooler, tier).unavailable_reason("cpu") is None:
            return tier
    return None


def perturb_parameters(module: nn.Module, seed: int) -> nn.Module:
    """Add ``PARAMETER_NOISE`` · N(0, 1) (drawn in float64 from ``seed``) to every floating-point parameter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dtype.is_floating_point:
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                parameter.add_((PARAMETER_NOISE * noise).to(device=parameter.device, dtype=parameter.dtype))
    return module


def _scaled_tolerance(dtype: torch.dtype, kind: str, scale: float) -> tuple[float, float]:
    rtol, atol = tolerance(dtype, kind)
    return scale * rtol, scale * atol


def input_error(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, kind: str = "output",
                scale: float = 1.0) -> tuple[float, float]:
    """Element-wise (max |a − e| / (atol + rtol·|e|), max |a − e|) with the ``kind`` row for ``dtype`` (× ``scale``).

    NaN in both at the same place counts as equal; NaN in one only is an infinite error.
    """
    rtol, atol = _scaled_tolerance(dtype, kind, scale)
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != reference {tuple(expected.shape)}")
    both_nan = actual.isnan() & expected.isnan()
    diff = (actual - expected).abs().masked_fill(both_nan, 0)
    if diff.isnan().any():
        return float("inf"), float("inf")
    if diff.numel() == 0:
        return 0.0, 0.0
    scaled = diff / (atol + rtol * expected.abs().masked_fill(both_nan, 0))
    return scaled.max().item(), diff.max().item()


def parameter_grad_error(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                         scale: float = 1.0) -> tuple[float, float]:
    """Norm-wise ‖a − e‖₂ / (rtol·‖e‖₂ + atol·√numel) with the "grad" row for ``dtype`` (× ``scale``), and max |a − e|."""
    return _normwise_error(actual, expected, dtype, scale, start_dim=0)


def plane_grad_error(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                     scale: float = 1.0) -> tuple[float, float]:
    """The worst (n, c) plane's :func:`parameter_grad_error` of an input gradient (N, C, ...), and max |a − e|."""
    return _normwise_error(actual, expected, dtype, scale, start_dim=2 if actual.dim() >= 3 else 0)


def _normwise_error(actual, expected, dtype, scale, start_dim: int) -> tuple[float, float]:
    """The norm-wise rule over the groups that share the leading ``start_dim`` indices: the worst group's error."""
    rtol, atol = _scaled_tolerance(dtype, "grad", scale)
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != reference {tuple(expected.shape)}")
    diff = actual - expected
    if diff.isnan().any():
        return float("inf"), float("inf")
    if diff.numel() == 0:
        return 0.0, 0.0
    diff, expected = diff.flatten(start_dim), expected.flatten(start_dim)
    bound = rtol * expected.norm(dim=-1) + atol * math.sqrt(expected.shape[-1])
    return float((diff.norm(dim=-1) / bound).max()), float(diff.abs().max())


@dataclass
class Verdict:
    """How far a tier is from its reference, in units of the tolerance (≤ 1 passes)."""

    output_error: float
    max_abs_output_error: float
    grad_error: float = 0.0
    max_abs_grad_error: float = 0.0
    worst_grad: str = ""
    rule: GradientRule = GradientRule()

    @property
    def ok(self) -> bool:
        return self.output_error <= 1 and self.grad_error <= 1

    @property
    def problem(self) -> str | None:
        """Why the tier does not match (``None`` when it does)."""
        if self.output_error > 1:
            return (f"output differs by {self.output_error:.3g}× the tolerance "
                    f"(max |difference| {self.max_abs_output_error:.3g})")
        if self.grad_error > 1:
            if self.worst_grad != "input":
                how = "norm of the difference"
            else:
                how = "max |difference|" if self.rule.input == "element" else "norm of the difference in the worst plane"
            if self.rule.tolerance_scale != 1:
                how += f", the pooler's {self.rule.tolerance_scale:g}× gradient tolerance"
            why = f"; the pooler's rule: {self.rule.why}" if self.rule.why else ""
            return (f"gradient of {self.worst_grad} differs by {self.grad_error:.3g}× the tolerance "
                    f"({how}; max |difference| {self.max_abs_grad_error:.3g}{why})")
        return None


def compare(output: tuple[torch.Tensor, torch.Tensor], grads: Iterable[tuple[str, torch.Tensor | None, torch.Tensor | None]],
            dtype: torch.dtype, rule: GradientRule = GradientRule()) -> Verdict:
    """The verdict for (tier output, reference output) and (name, tier grad, reference grad) triples.

    The gradient named ``"input"`` is compared element-wise (or per plane, by the pooler's ``rule``),
    parameters norm-wise.  A gradient present on one side only is an error.
    """
    verdict = Verdict(*input_error(*output, dtype, "output"), rule=rule)
    scale = rule.tolerance_scale
    for name, got, want in grads:
        if got is None and want is None:
            continue
        if got is None or want is None:
            raise AssertionError(f"gradient of {name} is missing in {'the tier' if got is None else 'the reference'}")
        if name != "input":
            error, abs_error = parameter_grad_error(got, want, dtype, scale)
        elif rule.input == "plane":
            error, abs_error = plane_grad_error(got, want, dtype, scale)
        else:
            error, abs_error = input_error(got, want, dtype, "grad", scale)
        if not error <= verdict.grad_error:
            verdict.grad_error, verdict.max_abs_grad_error, verdict.worst_grad = error, abs_error, name
    return verdict
