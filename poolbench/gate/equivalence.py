"""Proving a tier matches its pooler's float64 reference before it is timed.

A tier's output (and, when differentiable, the gradients of input and
parameters) must match its reference tier by the one equivalence contract of
:mod:`poolbench.verify.equivalence` (the same rules as ``poolbench check``); a
mismatch fails the test and the gate, so a fast but wrong tier never passes.
What is particular to the gate is only *where* it compares: on the full
benchmark shape, against the reference run on a corner of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .. import registry
from ..verify.equivalence import reference_tier
from ..verify.harness import judge, run_pass, share_parameters
from ..validation import pooled_size
from ..measure.closures import build_module, make_input
from ..measure.cases import format_shape
from ..measure.config import KERNEL_SIZE, PADDING, STRIDE, BenchConfig


@dataclass(frozen=True)
class Equivalence:
    """Outcome of comparing one tier with its pooler's reference (stored in ``extra_info``)."""

    ok: bool
    reference: str
    compared: str
    max_abs_error: float | None = None
    message: str = ""

    def as_dict(self) -> dict:
        return {"ok": self.ok, "reference": self.reference, "compared": self.compared,
                "max_abs_error": self.max_abs_error, "message": self.message}


_REFERENCE_CACHE: dict[tuple, tuple] = {}
_EQUIVALENCE_CACHE: dict[tuple, Equivalence] = {}


def clear_equivalence_cache() -> None:
    """Forget every cached equivalence verdict and reference output (tests that re-register poolers)."""
    _EQUIVALENCE_CACHE.clear()
    _REFERENCE_CACHE.clear()


def equivalence_at(pooler: str, tier: str, shape: Sequence[int], config: BenchConfig) -> Equivalence:
    """Does ``pooler[tier]`` on ``config.device`` match the float64 reference at ``shape``?

    The tier always runs on the full benchmark input (the same shapes it is
    timed at, so a compiled tier compiles nothing extra).  The slow
    ``reference`` tier runs on the top-left ``crop``×``crop`` corner; the
    outputs away from the crop's far edges (a margin of 2 outputs, enough for
    the 3×3 guides and blurs at stride 2) must then agree with the tier's,
    and so must the gradients of the input and parameters for a gradient
    that is zero outside that region.  If that fast check fails, the reference
    is rerun on the full input before a mismatch is declared, so a pooler
    whose outputs are not local (LIP's instance norm) is never failed wrongly.
    Results are cached per (pooler, tier, shape).
    """
    key = (pooler, tier, tuple(shape), config)
    if key not in _EQUIVALENCE_CACHE:
        _EQUIVALENCE_CACHE[key] = _check_equivalence(pooler, tier, tuple(shape), config)
    return _EQUIVALENCE_CACHE[key]


def _check_equivalence(pooler: str, tier: str, shape: tuple, config: BenchConfig) -> Equivalence:
    ref_tier = reference_tier(pooler)
    if ref_tier is None:
        return Equivalence(False, "none", "nothing",
                           message=f"{pooler} has no tier that runs on the CPU in float64 to check {tier} against")
    label = f"{ref_tier}@float64"
    differentiable = registry.get_spec(pooler, tier).differentiable
    height = shape[2]
    crop = min(height, config.crop) if ref_tier == "reference" else height
    try:
        problem, error = _compare_region(pooler, tier, ref_tier, shape, crop, differentiable, config)
        if problem is not None and crop < height:
            # The fast corner check failed: settle it against the reference on the full input.
            crop = height
            problem, error = _compare_region(pooler, tier, ref_tier, shape, crop, differentiable, config)
    except Exception as exc:  # a tier that crashes is not equivalent; say how it crashed
        return Equivalence(False, label, "crashed",
                           message=f"{pooler}[{tier}] at {format_shape(shape)} crashed: {type(exc).__name__}: {exc}")
    what = ("output+grads" if differentiable else "output") + (
        f" on the {crop}x{crop} corner" if crop < height else " on the full input")
    if problem is None:
        return Equivalence(True, label, what, error)
    return Equivalence(False, label, what, error,
                       f"{pooler}[{tier}] at {format_shape(shape)} does not match {pooler}[{label}] "
                       f"({what}, {config.dtype} tolerances): {problem}")


def _compare_region(pooler, tier, ref_tier, shape, crop, differentiable, config) -> tuple[str | None, float | None]:
    """(None, max |output error|) when tier and reference agree on the region ``crop`` gives, else (why not, ...).

    The tier runs on the full input (a wrong output shape is refused by the pooler contract's own check);
    only the region the reference covers is compared.
    """
    module = build_module(pooler, tier, shape[1], config).eval()
    reference, grad_out, region = _reference(pooler, ref_tier, module, shape, crop, differentiable, config)
    x = make_input(shape, config).requires_grad_(differentiable)
    actual = run_pass(module, x, grad_out, region)
    if "input" in actual.grads:
        actual.grads["input"] = actual.grads["input"][..., :crop, :crop]
    actual.output = actual.output.cpu()
    verdict = judge(actual, reference, config.torch_dtype, registry.get_spec(pooler, tier).gradient_rule)
    return verdict.problem, verdict.max_abs_output_error


def _reference(pooler, ref_tier, module, shape, crop, differentiable, config):
    """(reference pass on the ``crop`` corner, upstream gradient, compared region), cached per case."""
    key = (pooler, ref_tier, tuple(shape), crop, differentiable, config)
    if key in _REFERENCE_CACHE:
        return _REFERENCE_CACHE[key]
    reference = build_module(pooler, ref_tier, shape[1], config, device="cpu").double().eval()
    # same parameters as the tier, whatever their initialisation; if the layouts differ, both
    # were built from the same seed, so identical modules agree anyway
    share_parameters(module, reference)
    x = make_input(shape, config, device="cpu")[..., :crop, :crop].double().requires_grad_(differentiable)
    # the reference's output covers the corner; away from its far edges (a margin of 2 outputs, enough for
    # the 3x3 guides and blurs at stride 2) it equals the full input's
    margin = 2 if crop < shape[2] else 0
    rows, cols = (pooled_size(size, KERNEL_SIZE, STRIDE, PADDING) - margin for size in x.shape[-2:])
    region = (..., slice(0, rows), slice(0, cols))
    grad_out = None
    if differentiable:
        grad_out = torch.randn((*shape[:2], rows, cols), generator=torch.Generator().manual_seed(config.seed + 2),
                               dtype=torch.float64)
    result = (run_pass(reference, x, grad_out, region), grad_out, region)
    _REFERENCE_CACHE[key] = result
    return result
