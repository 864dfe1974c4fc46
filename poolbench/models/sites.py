"""Where a pooler goes in a network: the site record every network swap produces."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

__all__ = ["SITE_ATTRIBUTE", "PoolSite", "pooled", "tag"]

#: Attribute set on every pooler placed by :func:`build_with`, so it can be found again.
SITE_ATTRIBUTE = "poolbench_site"


@dataclass(frozen=True)
class PoolSite:
    """One place in a network where a pooler goes.

    ``name`` is the pooler's qualified module name in the swapped network
    (what ``named_modules`` and the FLOP counters report); ``role`` is
    ``"vgg"``, ``"stem"``, ``"main"`` (a block's main path), ``"shortcut"`` or ``"block"``.
    ``options`` are the pooler options the site's own network builds it with (e.g. LIP's
    ``logit_conv="bottleneck"`` in LIP-ResNet), as ``(name, value)`` pairs so the site stays hashable:
    the network and a per-layer measurement of the site build the same module.
    """

    name: str
    channels: int
    kernel_size: int
    stride: int
    padding: int
    role: str
    options: tuple[tuple[str, object], ...] = ()

    @property
    def geometry(self) -> tuple[int, int, int]:
        return self.kernel_size, self.stride, self.padding


def tag(module: nn.Module, site: PoolSite) -> nn.Module:
    """Mark ``module`` as the pooler of ``site`` (so :func:`poolbench.models.pooler_modules` finds it again)."""
    setattr(module, SITE_ATTRIBUTE, site)
    return module


def pooled(pooler: nn.Module, conv: nn.Module) -> nn.Sequential:
    """``Sequential(pool=pooler, conv=conv)``: a pooler in front of a (now stride-1) convolution.

    A named Sequential keeps the pooler visible to ``named_modules``, forward
    hooks and both FLOP counters' per-module breakdowns.
    """
    return nn.Sequential(OrderedDict(pool=pooler, conv=conv))
