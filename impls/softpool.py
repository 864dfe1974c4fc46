"""SoftPool (Stergiou, Poppe & Kalliatakis, ICCV 2021): y = Σ e^x·x / Σ e^x over the window.

The authors' PyTorch fallback (alexandrosstergiou/SoftPool, pytorch/SoftPool/
idea.py) computes ``avg_pool(x·e^x) / avg_pool(e^x)`` without any shift, so it
overflows to inf/NaN once x exceeds ~88 in float32.  Here the weights are a
softmax over each window, which subtracts the window maximum first: |x| = 1e4
stays finite and, as the input scale grows, the output tends to the window
max.  Padded positions get weight 0.  Half precision runs in float32.
"""
from __future__ import annotations

from poolbench.impls._window import compute_dtype, softmax_pool, unfold_windows
from poolbench.base import Pool2d
from poolbench.registry import register


# MACs: softmax over the window (5 per tap), w·x and Σ (2 per tap)
@register("softpool", "vectorized", params="0", family="baseline", macs=lambda g, o: 7 * g.taps * g.outputs())
class SoftPool(Pool2d):
    """Σ softmax(x)·x over each window, max-subtracted (no overflow)."""

    def pool(self, x):
        windows = unfold_windows(x.to(compute_dtype(x.dtype)), self.kernel_size, self.stride, self.padding)
        return windows.fold(softmax_pool(windows, windows.values)).to(x.dtype)
