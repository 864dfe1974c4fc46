"""BlurPool and MaxBlurPool (Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019).

* ``blurpool``: a binomial low-pass with reflect padding, sampled with
  stride s — Zhang's ``BlurPool`` on its own.
* ``maxblur``: ``max_pool2d(k, stride=1, padding=p)`` then that blur-and-
  subsample — Zhang's MaxPool → MaxBlurPool replacement.  In the ResNet stem
  slot (k=3, s=2, p=1) the official network does not keep the 3×3 window:
  adobe/antialiased-cnns, antialiased_cnns/resnet.py builds its stem as
  ``MaxPool2d(kernel_size=2, stride=1)`` then ``BlurPool(stride=2)``, and so
  does poolbench there (``max_pool2d(x, 2, 1)``, then the blur sampled at rows
  0, s, 2s, …; on odd sizes, where the official output is one row shorter,
  the last sample is clamped to the map's edge to keep the standard size).

``filter_size`` (1–7 taps, default 4): the official library and its
pretrained models use ``filt_size=4`` ([1,3,3,1]ᵀ[1,3,3,1]/64); 3 is the
[1,2,1] filter.  An even filter is off-centre by half a pixel: it covers
offsets −1 … 2 around each sample, as Zhang's padding (left (f−1)//2, right
ceil((f−1)/2)) does.

Output size.  Every poolbench pooler returns floor((H + 2p − k)/s) + 1 so
they are swappable; Zhang's BlurPool returns ceil(H/s) instead.  How each
matches the standard size:

* maxblur: the stride-1 max map has H₁ = H + 2p − k + 1 rows, row i·s of it
  being pooling window i; blurring it (reflect padding) and keeping rows
  0, s, 2s, … gives ceil(H₁/s) = the standard size — exactly Zhang's
  construction, no adjustment (the stem slot: see above).
* blurpool: output i is the blurred value at the centre row of pooling
  window i, c_i = i·s − p + (k − 1)//2 (the lower of the two middle rows for
  even k), clamped to the image.  For k=3,s=2,p=1 that is row 2i — Zhang's
  BlurPool(stride 2) exactly; for k=2,s=2,p=0 also row 2i (the same
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

from poolbench.impls._window import compute_dtype
from poolbench.base import Pool2d
from poolbench.registry import register
from poolbench.validation import pooled_size

#: Zhang's antialiased-cnns offers binomial filters of 1 to 7 taps.
MAX_FILTER_SIZE = 7
#: The official library's and pretrained models' default (``filt_size=4``).
DEFAULT_FILTER_SIZE = 4
#: The ResNet stem's window, which the official MaxBlur replaces by MaxPool(2, stride 1) + BlurPool(stride 2).
STEM_GEOMETRY = (3, 2, 1)


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
    def __init__(self, channels, kernel_size=2, stride=2, padding=0, *, filter_size: int = DEFAULT_FILTER_SIZE):
        super().__init__(channels, kernel_size, stride, padding)
        self.filter_size = _check_filter_size(filter_size)
        self.taps = binomial_taps(self.filter_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, filter_size={self.filter_size}"


def _blur_macs(options) -> int:
    """MACs of one blurred output: the f×f binomial taps (official default f = 4)."""
    return int(options.get("filter_size", 4)) ** 2


def _maxblur_max_macs(g) -> int:
    """The stride-1 max: 2×2 without padding in the ResNet stem slot (official network), else the k×k window."""
    if (g.kernel_size, g.stride, g.padding) == (3, 2, 1) and min(g.height, g.width) >= 2:
        return 4 * g.batch * g.channels * (g.height - 1) * (g.width - 1)
    return g.taps * g.outputs(1)


# MACs: the binomial f×f blur sampled at the pooled grid
@register("blurpool", "vectorized", params="0", family="baseline",
          macs=lambda g, o: _blur_macs(o) * g.outputs())
class BlurPool(_BinomialBlur):
    """Binomial blur (4 taps by default) with reflect padding, sampled at the pooling windows' centres."""

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
          macs=lambda g, o: _maxblur_max_macs(g) + _blur_macs(o) * g.outputs())
class MaxBlurPool(_BinomialBlur):
    """Max pooling at stride 1, then the binomial blur sampled with stride s (Zhang's MaxBlurPool).

    In the ResNet stem slot (k3 s2 p1) the max window is 2×2 without padding,
    as in the official antialiased ResNets.
    """

    def pool(self, x):
        xc = x.to(compute_dtype(x.dtype))
        # a 1-pixel-wide map has no 2×2 window: it keeps the padded 3×3 max there
        stem = (self.kernel_size, self.stride, self.padding) == STEM_GEOMETRY and min(x.shape[-2:]) >= 2
        dense = F.max_pool2d(xc, 2, 1) if stem else F.max_pool2d(xc, self.kernel_size, 1, self.padding)
        out_h, out_w = self.output_size(*x.shape[-2:])
        rows = (torch.arange(out_h, device=x.device) * self.stride).clamp_(max=dense.shape[-2] - 1)
        cols = (torch.arange(out_w, device=x.device) * self.stride).clamp_(max=dense.shape[-1] - 1)
        return blur_sample(dense, rows, cols, self.taps).to(x.dtype)
