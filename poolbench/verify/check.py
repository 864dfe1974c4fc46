"""Equivalence checks: every tier equals the reference, outputs and gradients.

For every pooler registered with more than one tier, each tier available on
the device other than its reference tier is run beside that reference
(float64, on the CPU) on random inputs over :data:`CASES` (odd sizes,
padding, k=3/s=2/pad=1, batch 1), and judged by the one equivalence contract
of :mod:`poolbench.verify.equivalence` (the gate and the tests use the same):
output and input gradient element-wise, parameter gradients norm-wise.  Both
modules share the same perturbed parameters and, for stochastic poolers, the same seed.

Every differentiable pooler (each tier that runs in float64) also passes
``torch.autograd.gradcheck`` w.r.t. input and parameters.

A case a pooler cannot take (Full-DPP on a size its guide cannot match) is
recorded as ``n/a`` with the reason; an exception in a tier is a failure with
its message; the check goes on either way.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .. import registry
from .equivalence import perturb_parameters, reference_tier
from .harness import build_pair, judge, run_pass
from ..stochastic import Seeded
from ..validation import pooled_size

__all__ = ["CASES", "Case", "CheckPlan", "CheckResult", "check_equivalence", "check_gradients", "run_checks", "summarise"]


@dataclass(frozen=True)
class Case:
    shape: tuple[int, int, int, int]
    kernel_size: int
    stride: int
    padding: int

    def __str__(self) -> str:
        n, c, h, w = self.shape
        return f"{n}x{c}x{h}x{w} k{self.kernel_size}s{self.stride}p{self.padding}"


#: Shapes and windows every tier is compared on.
CASES = (
    Case((2, 3, 8, 8), 2, 2, 0),
    Case((1, 4, 9, 7), 3, 2, 1),
    Case((2, 3, 7, 9), 2, 2, 0),
    Case((1, 2, 6, 10), 3, 2, 1),
    Case((2, 2, 5, 6), 3, 1, 1),
)

#: Small case for gradcheck (finite differences cost one forward per input element).
GRADCHECK_CASES = (Case((1, 2, 4, 6), 2, 2, 0), Case((1, 2, 5, 5), 3, 2, 1))


@dataclass
class CheckResult:
    """One (pooler, tier, case) comparison; errors are max |tier − reference| / (atol + rtol·|reference|)."""

    pooler: str
    tier: str
    check: str  # "equivalence" or "gradcheck"
    case: str
    status: str  # "pass", "fail", "n/a", "skip"
    output_error: float = float("nan")
    grad_error: float = float("nan")
    max_abs_output_error: float = float("nan")
    max_abs_grad_error: float = float("nan")
    detail: str = ""
    dtype: str = ""
    device: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _build(name: str, tier: str, case: Case, options: dict) -> nn.Module:
    return registry.create(name, case.shape[1], case.kernel_size, case.stride, case.padding, tier=tier, **options)


def _options_for(spec: registry.PoolerSpec) -> dict:
    return {"seed": 0} if spec.stochastic else {}


def check_equivalence(name: str, tier: str, case: Case, device="cpu", dtype=torch.float32, seed: int = 0) -> CheckResult:
    """Compare ``name[tier]`` on ``device``/``dtype`` with its reference tier in float64 (:mod:`poolbench.verify.equivalence`)."""
    spec = registry.get_spec(name, tier)
    result = CheckResult(name, tier, "equivalence", str(case), "pass", dtype=str(dtype).replace("torch.", ""),
                         device=str(device))
    options = _options_for(spec)
    try:
        candidate, reference = build_pair(lambda t: _build(name, t, case, options), name, tier, seed, device, dtype)
    except ValueError as exc:
        result.status, result.detail = "n/a", str(exc)
        return result
    try:
        generator = torch.Generator().manual_seed(seed)
        x64 = torch.randn(case.shape, generator=generator, dtype=torch.float64)
        x_ref = x64.clone().requires_grad_(spec.differentiable)
        x_new = x64.to(device=device, dtype=dtype).requires_grad_(spec.differentiable)
        n, c, h, w = case.shape
        out_shape = (n, c, *(pooled_size(size, case.kernel_size, case.stride, case.padding) for size in (h, w)))
        grad_out = torch.randn(out_shape, generator=generator, dtype=torch.float64) if spec.differentiable else None
        try:
            expected = run_pass(reference, x_ref, grad_out)
        except ValueError as exc:  # the case does not apply to this pooler (e.g. Full-DPP geometry)
            result.status, result.detail = "n/a", str(exc)
            return result
        verdict = judge(run_pass(candidate, x_new, grad_out), expected, dtype, spec.gradient_rule)
        result.output_error, result.max_abs_output_error = verdict.output_error, verdict.max_abs_output_error
        if spec.differentiable:
            result.grad_error, result.max_abs_grad_error = verdict.grad_error, verdict.max_abs_grad_error
        if not verdict.ok:
            result.status, result.detail = "fail", verdict.problem
    except Exception as exc:  # a broken tier is a failed cell, not a crashed check
        result.status, result.detail = "fail", f"{type(exc).__name__}: {exc}"
    return result


def check_gradients(name: str, tier: str, case: Case, device="cpu") -> CheckResult:
    """``torch.autograd.gradcheck`` in float64 w.r.t. the input and every parameter."""
    spec = registry.get_spec(name, tier)
    result = CheckResult(name, tier, "gradcheck", str(case), "pass", dtype="float64", device=str(device))
    try:
        module = _build(name, tier, case, _options_for(spec)).to(device=device, dtype=torch.float64)
        perturb_parameters(module, 1)
        if spec.stochastic:
            module.eval()  # sampling is a discrete choice; gradcheck the deterministic eval path
        names = [pname for pname, _ in module.named_parameters()]
        params = tuple(p.detach().clone().requires_grad_() for _, p in module.named_parameters())
        x = torch.randn(case.shape, dtype=torch.float64, device=device).requires_grad_()

        def function(x, *values):
            if isinstance(module, Seeded):
                module.reseed()
            return torch.func.functional_call(module, dict(zip(names, values)), (x,))

        try:
            function(x, *params)
        except ValueError as exc:
            result.status, result.detail = "n/a", str(exc)
            return result
        torch.autograd.gradcheck(function, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)
    except Exception as exc:
        result.status, result.detail = "fail", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return result


@dataclass
class CheckPlan:
    poolers: list[str] | None = None
    tiers: list[str] | None = None
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    cases: tuple[Case, ...] = CASES
    gradcheck: bool = True


def run_checks(plan: CheckPlan, progress=None) -> list[CheckResult]:
    """Run equivalence for every multi-tier pooler and gradcheck for every differentiable one."""
    registry.check_tier_names(plan.tiers or (), poolers=plan.poolers)
    jobs = []
    for name in plan.poolers or registry.names():
        tiers = registry.tiers(name)
        for tier in tiers:
            if plan.tiers and tier not in plan.tiers:
                continue
            spec = registry.get_spec(name, tier)
            reason = spec.unavailable_reason(plan.device)
            if reason is not None:
                jobs.append(("skip", name, tier, None, reason))
                continue
            if tier != reference_tier(name):
                jobs += [("equivalence", name, tier, case, None) for case in plan.cases]
            if plan.gradcheck and spec.differentiable:
                jobs += [("gradcheck", name, tier, case, None) for case in GRADCHECK_CASES]
    results = []
    for kind, name, tier, case, reason in jobs:
        if progress is not None:
            progress(f"{kind} {name}[{tier}] {case or ''}", len(jobs))
        if kind == "skip":
            results.append(CheckResult(name, tier, "all", "", "skip", detail=reason, device=plan.device))
        elif kind == "equivalence":
            results.append(check_equivalence(name, tier, case, plan.device, plan.dtype))
        else:
            results.append(check_gradients(name, tier, case, plan.device))
    return results


def checked_nothing(results: list[CheckResult]) -> bool:
    """True when every result is a skip: such a check proved nothing and must not pass."""
    return all(result.status == "skip" for result in results)


#: A (pooler, tier)'s gradcheck verdict is the worst over its cases; "" means none ran.
_GRADCHECK_PRECEDENCE = ("", "n/a", "pass", "fail")


def summarise(results: list[CheckResult]) -> list[dict]:
    """One row per (pooler, tier): worst errors over the cases and the overall status."""
    rows: dict[tuple[str, str], dict] = {}
    for r in results:
        row = rows.setdefault((r.pooler, r.tier), {
            "pooler": r.pooler, "tier": r.tier, "cases": 0, "worst output error": 0.0, "worst grad error": 0.0,
            "max abs output error": 0.0, "max abs grad error": 0.0, "gradcheck": "", "status": "pass", "detail": ""})
        if r.status == "skip":
            row.update(status="skip", detail=r.detail)
            continue
        if r.check == "gradcheck":
            row["gradcheck"] = max(row["gradcheck"], r.status, key=_GRADCHECK_PRECEDENCE.index)
        elif r.status != "n/a":
            row["cases"] += 1
            for key, value in (("worst output error", r.output_error), ("worst grad error", r.grad_error),
                               ("max abs output error", r.max_abs_output_error), ("max abs grad error", r.max_abs_grad_error)):
                if not math.isnan(value):
                    row[key] = max(row[key], value)
        if r.status == "fail":
            row["status"] = "fail"
            row["detail"] = row["detail"] or f"{r.check} {r.case}: {r.detail}"
    return list(rows.values())
