"""Mixed max-average pooling (Lee, Gallagher & Tu, AISTATS 2016).

    y = a·max(window) + (1 − a)·avg(window),   a = sigmoid(θ)

with one learned θ per layer ("mixed pooling, one mixing proportion per
layer"), θ = 0 at init so the layer starts as 0.5·max + 0.5·avg.  The sigmoid
keeps a in [0, 1] without clipping (clipping would stop the gradient at the
bounds).  The average skips padded positions.  Half precision is
blended in float32.
"""
from __future__ import annotations

import torch
from torch import nn

from poolbench.impls._window import compute_dtype, max_avg_blend
from poolbench.base import Pool2d
from poolbench.registry import register


# MACs: max + avg over the window, then a·m + (1−a)·v (4 per output)
@register("mixed", "vectorized", params="1", param_count=lambda channels, kernel_size: 1, family="baseline",
          macs=lambda g, o: (2 * g.taps + 4) * g.outputs())
class MixedPool(Pool2d):
    """a·max + (1−a)·avg with a = sigmoid(θ) learned per layer (init 0.5)."""

    def __init__(self, channels, kernel_size=2, stride=2, padding=0):
        super().__init__(channels, kernel_size, stride, padding)
        self.logit = nn.Parameter(torch.zeros(()))

    @property
    def mix(self) -> torch.Tensor:
        """The mixing proportion a = sigmoid(θ) of the max branch."""
        return torch.sigmoid(self.logit)

    def pool(self, x):
        xc = x.to(compute_dtype(x.dtype))
        a = torch.sigmoid(self.logit.to(xc.dtype))
        return max_avg_blend(xc, a, self.kernel_size, self.stride, self.padding).to(x.dtype)
