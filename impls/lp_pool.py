"""Lp pooling: y = (mean over the window of |x|^p)^(1/p), p = 2 (L2 pooling) by default.

A *mean*, not torch.nn.LPPool2d's sum: ours = LPPool2d / (k²)^(1/p) when there
is no padding, so p = 1 on non-negative input is average pooling and p → ∞
tends to max pooling of |x|.  Padded positions are not in the mean.

Numerics: each window is divided by its largest |x| before the power
(detached: y = m·(mean (|x|/m)^p)^(1/p) does not depend on m, so the
gradient stays exact), so |x|^p cannot overflow for large inputs or p.  An
all-zero window gives 0 with gradient 0 (the root's derivative is infinite
there; that is the subgradient any norm takes at 0).  Half precision runs
in float32.  Non-finite input propagates as in ``torch.nn.functional.lp_pool2d``:
a window holding NaN gives NaN (its scale is NaN, returned as is instead of
the 0 an all-zero window gets), one holding ±inf (and no NaN) gives +inf (the
scale is capped at the largest finite value, so inf/scale stays inf).

``norm_type`` (as in torch.nn.LPPool2d) must be ≥ 1: below 1 |x|^p has an
infinite derivative at 0 and the mean is no longer a norm.
"""
from __future__ import annotations

import math
import numbers

import torch

from poolbench.impls._window import compute_dtype, unfold_windows
from poolbench.base import Pool2d
from poolbench.registry import register


# MACs: |x|^p (2), Σ (1) per tap; mean and p-th root per window
@register("lp", "vectorized", params="0", family="baseline", macs=lambda g, o: (3 * g.taps + 2) * g.outputs())
class LpPool(Pool2d):
    """(mean_window |x|^p)^(1/p) with p = norm_type (2 by default), padded positions excluded."""

    def __init__(self, channels, kernel_size=2, stride=2, padding=0, *, norm_type: float = 2.0):
        super().__init__(channels, kernel_size, stride, padding)
        if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real) or not math.isfinite(norm_type) \
                or norm_type < 1:
            raise ValueError(f"norm_type must be a finite number >= 1, got {norm_type!r}")
        self.norm_type = float(norm_type)

    def pool(self, x):
        windows = unfold_windows(x.to(compute_dtype(x.dtype)).abs(), self.kernel_size, self.stride, self.padding)
        # padded zeros never exceed |x|; NaN propagates through amax and clamp; inf becomes the largest finite
        # value, so that the window's inf / scale stays inf and the result is inf
        scale = windows.values.amax(2, keepdim=True).detach().clamp(max=torch.finfo(windows.values.dtype).max)
        nonzero = scale > 0
        ratio = windows.values / torch.where(nonzero, scale, torch.ones_like(scale))
        mean = ratio.pow(self.norm_type).sum(2, keepdim=True) / windows.count
        root = torch.where(nonzero, mean, torch.ones_like(mean)).pow(1 / self.norm_type)
        pooled = torch.where(nonzero, scale * root, scale).squeeze(2)  # scale is 0 or NaN there
        return windows.fold(pooled).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, norm_type={self.norm_type:g}"
