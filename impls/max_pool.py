"""Max pooling: the paper's main baseline, ATen's ``max_pool2d`` as is.

Padded positions never win (ATen pads with −∞), so they do not count.  Runs
in the input's dtype: it is the speed baseline every other pooler is compared
against, so it must be exactly what PyTorch users get.
"""
from __future__ import annotations

import torch.nn.functional as F

from poolbench.base import Pool2d
from poolbench.registry import register


@register("max", "vectorized", params="0", family="baseline", macs=lambda g, o: g.taps * g.outputs())
class MaxPool(Pool2d):
    """Max pooling (torch.nn.functional.max_pool2d)."""

    def pool(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
