"""Which cases exist: the registry-driven pooler × tier × VGG-16 layer × pass list.

New poolers and tiers join the gate automatically because the list is read
from :mod:`poolbench.registry`, never written out by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .. import registry
from .config import COMPARATOR, PASSES, BenchConfig


@dataclass(frozen=True)
class BenchCase:
    """One timed cell: ``pooler[tier]`` at VGG-16 pooling layer ``layer`` (1-5), one pass."""

    pooler: str
    tier: str
    layer: int
    shape: tuple[int, int, int, int]
    pass_: str
    skip_reason: str | None = None

    @property
    def id(self) -> str:
        # Pooler and tier names are identifiers, so "-" separates the fields unambiguously.
        return f"{self.pooler}-{self.tier}-layer{self.layer}-{self.pass_}"

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.pooler, self.tier, self.layer, self.pass_)

    @property
    def group(self) -> str:
        return group_name(self.layer, self.shape, self.pass_)


def group_name(layer: int, shape: Sequence[int], pass_: str) -> str:
    """pytest-benchmark group: one per VGG-16 pooling shape and pass."""
    return f"layer{layer} {'x'.join(map(str, shape))} {pass_}"


def split_names(values: Iterable[str] | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    out = [v.strip() for value in values for v in str(value).split(",") if v.strip()]
    return out or None


def bench_cases(config: BenchConfig, poolers: Iterable[str] | None = None,
                tiers: Iterable[str] | None = None) -> list[BenchCase]:
    """Every registered pooler × tier × VGG-16 layer × pass, for ``config.device``.

    The float64 ``reference`` tier is never timed (it is the ground truth, and
    far too slow).  Tiers that cannot run on the device and the backward pass
    of non-differentiable poolers are returned with a ``skip_reason``, so the
    report says why they were not measured.  Unknown names in ``poolers`` or
    ``tiers`` raise ``ValueError``.
    """
    poolers, tiers = split_names(poolers), split_names(tiers)
    known = registry.names()
    for name in poolers or ():
        if name not in known:
            raise ValueError(f"unknown pooler {name!r}; known poolers: {', '.join(known)}")
    registry.check_tier_names(tiers or ())
    cases = []
    for spec in registry.specs():
        left_out = registry.left_out_reason(spec.tier, asked=tiers)
        if left_out is not None or (poolers and spec.name not in poolers) or (tiers and spec.tier not in tiers):
            continue
        reason = spec.unavailable_reason(config.device)
        for layer, shape in enumerate(config.shapes(), start=1):
            for pass_ in PASSES:
                skip = reason
                if skip is None and pass_ == "forward_backward" and not spec.differentiable:
                    skip = f"{spec.name} is not differentiable"
                cases.append(BenchCase(spec.name, spec.tier, layer, shape, pass_, skip))
    return cases


def comparator_cases(config: BenchConfig) -> list[BenchCase]:
    """``avg_pool2d`` itself at every layer and pass (absolute times for the report and compare-fail)."""
    return [BenchCase(COMPARATOR, "aten", layer, shape, pass_)
            for layer, shape in enumerate(config.shapes(), start=1) for pass_ in PASSES]


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))
