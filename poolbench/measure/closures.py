"""Inputs, modules and zero-argument pass closures for a case (set-up kept outside the timed region).

:func:`case_closures` is the one way to get "a zero-argument closure for one
case and pass" (and the ``avg_pool2d`` comparator's on the same input).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .. import registry
from ..verify.equivalence import perturb_parameters
from .subject import PassSubject
from .cases import BenchCase
from .config import COMPARATOR, KERNEL_SIZE, PADDING, PASSES, STRIDE, BenchConfig


def make_input(shape: Sequence[int], config: BenchConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """A reproducible standard-normal input: the same for every tier of a layer."""
    generator = torch.Generator().manual_seed(config.seed + 1000 * shape[1] + shape[2])
    x = torch.randn(tuple(shape), generator=generator)
    return x.to(device=device or config.device, dtype=config.torch_dtype)


def build_module(pooler: str, tier: str, channels: int, config: BenchConfig,
                 device: torch.device | str | None = None) -> torch.nn.Module:
    """``pooler[tier]`` with the equivalence contract's reproducibly perturbed parameters.

    Seeding makes every tier of a pooler get the same parameters.
    """
    torch.manual_seed(config.seed)
    module = perturb_parameters(registry.create(pooler, channels, KERNEL_SIZE, STRIDE, PADDING, tier=tier), config.seed + 1)
    device = torch.device(device or config.device)
    return module.to(device=device, dtype=config.torch_dtype)


def _trainable(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def pass_closure(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, pass_: str,
                 params: Sequence[torch.Tensor] = (), module: torch.nn.Module | None = None) -> Callable[[], None]:
    """A zero-argument closure running one ``pass_`` of ``fn`` on ``x`` and waiting for the device.

    See :class:`PassSubject`: ``forward`` runs under ``torch.no_grad`` with
    ``module`` in eval mode; ``forward_backward`` puts ``module`` in train
    mode and computes the gradients of ``x`` and ``params``.
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass must be one of {', '.join(PASSES)}, got {pass_!r}")
    return PassSubject(fn, x, params, module).closure(pass_)


def comparator(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, KERNEL_SIZE, STRIDE, PADDING, count_include_pad=False)


def case_closures(case: BenchCase, config: BenchConfig, module: torch.nn.Module | None = None,
                  x: torch.Tensor | None = None) -> tuple[Callable[[], None], Callable[[], None]]:
    """(pooler closure, ``avg_pool2d`` closure) for ``case`` on the same input and pass.

    Both are zero-argument and include waiting for the device; the pooler's
    module gets the equivalence contract's perturbed parameters.
    """
    x = make_input(case.shape, config) if x is None else x
    baseline = pass_closure(comparator, x, case.pass_)
    if case.pooler == COMPARATOR:
        return baseline, baseline
    module = build_module(case.pooler, case.tier, case.shape[1], config) if module is None else module
    return pass_closure(module, x, case.pass_, _trainable(module), module), baseline
