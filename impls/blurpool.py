"""BlurPool and MaxBlurPool (Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019).

* ``blurpool``: a binomial low-pass ([1,2,1]ᵀ[1,2,1]/16 by default) with
  reflect padding, sampled with stride s — Zhang's ``BlurPool`` on its own.
* ``maxblur``: ``max_pool2d(k, stride=1, padding=p)`` then that blur-and-
  subsample — Zhang's MaxPool → MaxBlurPool replacement.

Output size.  Every poolbench pooler returns floor((H + 2p − k)/s) + 1 so
they are swappable; Zhang's BlurPool returns ceil(H/s) instead.  How each
matches the standard size:

* maxblur: the stride-1 max map has H₁ = H + 2p − k + 1 rows, row i·s of it
  being pooling window i; blurring it (reflect padding) and keeping rows
  0, s, 2s, … gives ceil(H₁/s) = the standard size — exactly Zhang's
  construction, no adjustment.
* blurpool: output i is the blurred value at the centre row of pooling
  window i, c_i = i·s − p + (k − 1)//2 (the lower of the two middle rows for
  even k), clamped to the image.  For k=3,s=2,p=1 that is row 2i — Zhang's
  BlurPool(filt 3, stride 2) exactly; for k=2,s=2,p=0 also row 2i (the same
  as Zhang for even H; for odd H the last row, which belongs to no full
  window, is dropped as floor-mode pooling drops it).  The clamp only
  matters for even k with p = k/2, whose first window holds one real row.

Reflect padding mirrors without repeating the edge (as ``F.pad(mode=
"reflect")``), generalised to any width by periodic reflection; a 1-pixel-wide
map has nothing to mirror and repeats its value.  So a constant image stays
constant (zero padding would darken the border).  The blur is separable and
evaluated only at the kept rows/columns (gathers of ``filter_size`` rows per
output), so it costs O(output·filter_size) per pass, not a full-resolution
convolution.  Half precision runs in float32.  No parameters.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from impls._window import compute_dtype
from poolbench.base import Pool2d
from poolbench.registry import register
from poolbench.validation import pooled_size

#: Zhang's antialiased-cnns offers binomial filters of 1 to 7 taps.
MAX_FILTER_SIZE = 7


def binomial_taps(filter_size: int) -> list[float]:
    """Normalised binomial coefficients, e.g. 3 → [1, 2, 1]/4 (the 1-D factor of the 2-D blur)."""
    row = [math.comb(filter_size - 1, i) for i in range(filter_size)]
    return [value / sum(row) for value in row]


def reflect_index(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map any integer position onto [0, size) by mirroring about the edge samples (``reflect`` mode)."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index > size - 1, period - index, index)


def blur_sample_last(x: torch.Tensor, centres: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """The 1-D blur of ``x`` along its last axis, evaluated only at positions ``centres`` (m,) → (..., m)."""
    offsets = torch.arange(len(taps), device=x.device) - (len(taps) - 1) // 2
    index = reflect_index(centres.view(-1, 1) + offsets.view(1, -1), x.shape[-1])
    gathered = x.index_select(-1, index.flatten()).view(*x.shape[:-1], len(centres), len(taps))
    return gathered @ torch.tensor(taps, dtype=x.dtype, device=x.device)


def blur_sample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """The separable binomial blur (reflect padding) of ``x`` (N, C, H, W) at ``rows`` × ``cols``."""
    x = blur_sample_last(x.transpose(-1, -2), rows, taps).transpose(-1, -2)
    return blur_sample_last(x, cols, taps)


def _check_filter_size(filter_size) -> int:
    if isinstance(filter_size, bool) or not isinstance(filter_size, numbers.Integral) \
            or not 1 <= filter_size <= MAX_FILTER_SIZE:
        raise ValueError(f"filter_size must be an int from 1 to {MAX_FILTER_SIZE}, got {filter_size!r}")
    return int(filter_size)


class _BinomialBlur(Pool2d):
    def __init__(self, channels, kernel_size=2, stride=2, padding=0, *, filter_size: int = 3):
        super().__init__(channels, kernel_size, stride, padding)
        self.filter_size = _check_filter_size(filter_size)
        self.taps = binomial_taps(self.filter_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, filter_size={self.filter_size}"


# MACs: the binomial f×f blur sampled at the pooled grid
@register("blurpool", "vectorized", params="0", family="baseline",
          macs=lambda g, o: int(o.get("filter_size", 3)) ** 2 * g.outputs())
class BlurPool(_BinomialBlur):
    """Binomial [1,2,1] blur with reflect padding, sampled at the pooling windows' centres with stride s."""

    def window_centres(self, size: int, device) -> torch.Tensor:
        """c_i = i·s − p + (k−1)//2, clamped to [0, size): the row (column) standing for window i."""
        count = pooled_size(size, self.kernel_size, self.stride, self.padding)
        first = (self.kernel_size - 1) // 2 - self.padding
        return (torch.arange(count, device=device) * self.stride + first).clamp_(0, size - 1)

    def pool(self, x):
        xc = x.to(compute_dtype(x.dtype))
        rows = self.window_centres(x.shape[-2], x.device)
        cols = self.window_centres(x.shape[-1], x.device)
        return blur_sample(xc, rows, cols, self.taps).to(x.dtype)


# MACs: max at stride 1, then the blur sampled at stride s
@register("maxblur", "vectorized", params="0", family="baseline",
          macs=lambda g, o: g.taps * g.outputs(1) + int(o.get("filter_size", 3)) ** 2 * g.outputs())
class MaxBlurPool(_BinomialBlur):
    """Max pooling at stride 1, then the binomial blur sampled with stride s (Zhang's MaxBlurPool)."""

    def pool(self, x):
        dense = F.max_pool2d(x.to(compute_dtype(x.dtype)), self.kernel_size, 1, self.padding)
        rows = torch.arange(0, dense.shape[-2], self.stride, device=x.device)
        cols = torch.arange(0, dense.shape[-1], self.stride, device=x.device)
        return blur_sample(dense, rows, cols, self.taps).to(x.dtype)
