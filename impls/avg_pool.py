"""Average pooling: ATen's ``avg_pool2d`` with ``count_include_pad=False``.

Padded positions are not part of a window, so border windows average
only their real values.  Runs in the input's dtype (it is a speed baseline).
"""
from __future__ import annotations

import torch.nn.functional as F

from poolbench.base import Pool2d
from poolbench.registry import register


@register("avg", "vectorized", params="0", family="baseline", macs=lambda g, o: g.taps * g.outputs())
class AvgPool(Pool2d):
    """Average pooling over the real (non-padded) positions of each window."""

    def pool(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=False)
