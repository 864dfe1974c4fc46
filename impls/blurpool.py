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

The authors' networks (adobe/antialiased-cnns, ``antialiased_cnns/resnet.py``
and ``vgg.py``, filter size 4): the antialiased ResNet replaces the stem's
max pool by MaxPool(2, stride 1) + BlurPool (maxblur), runs each stride-2
bottleneck's 3×3 conv2 at stride 1 and blurs its output (after BN and ReLU)
before conv3 ("ConvBlurPool"), and blurs the block input before a stride-1
projection shortcut (BlurPool): no parameter is added and the output stays
(N, 1000).  Both poolers declare that network; each is measured at its own
sites (maxblur at the stem, blurpool at the blocks), the other's modules
sitting where the authors put them.  The antialiased VGG-16 puts MaxBlurPool
at VGG's five max pools — maxblur at the paper's sites, so not measured twice;
it has no BlurPool on its own, so blurpool has no VGG-16 of its authors.

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
from torch import nn

from poolbench.impls._window import compute_dtype
from poolbench.base import Pool2d
from poolbench.models.paper import strided_convs
from poolbench.models.sites import PoolSite, tag
from poolbench.registry import PoolerNetwork, register
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


def antialiased_resnet(model: nn.Module, make, own: str) -> list[PoolSite]:
    """adobe/antialiased-cnns' ResNet (``pool_only=True``) from an unmodified torchvision ResNet, in place.

    ``make(site)`` builds the ``own`` pooler's modules ("maxblur": the stem; "blurpool": each stride-2
    block's main path and shortcut); the other kind is built here, with the official filter size 4.
    Returns ``own``'s sites.
    """
    sites = []
    stem = PoolSite("maxpool", model.conv1.out_channels, 3, 2, 1, "stem")
    model.maxpool = tag(make(stem), stem) if own == "maxblur" else MaxBlurPool(stem.channels, 3, 2, 1)
    if own == "maxblur":
        sites.append(stem)

    def blur(site: PoolSite) -> nn.Module:
        if own != "blurpool":
            return BlurPool(site.channels, *site.geometry)
        sites.append(site)
        return tag(make(site), site)

    for layer_name in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in enumerate(getattr(model, layer_name)):
            strided = strided_convs(block)
            if not strided:
                continue
            if not hasattr(block, "conv3") or block.downsample is None:
                raise ValueError(f"the antialiased ResNet is built here from bottleneck ResNets; "
                                 f"{layer_name}.{index} is not one")
            prefix = f"{layer_name}.{index}"
            for conv in strided:
                conv.stride = (1, 1)
            main = PoolSite(f"{prefix}.conv3.0", block.conv3.in_channels, 2, 2, 0, "main")
            block.conv3 = nn.Sequential(blur(main), block.conv3)
            projection = block.downsample[0]
            shortcut = PoolSite(f"{prefix}.downsample.0", projection.in_channels, 2, 2, 0, "shortcut")
            projection.stride = (1, 1)
            block.downsample = nn.Sequential(blur(shortcut), projection, *block.downsample[1:])
    return sites


def _antialiased(own: str) -> dict[str, PoolerNetwork]:
    source = "adobe/antialiased-cnns antialiased_cnns/resnet.py"
    resnet = PoolerNetwork(lambda model, make: antialiased_resnet(model, make, own), source,
                           lambda sites: 0, "antialiased ResNet, filter size 4, pool_only=True")
    declared = {"resnet50@authors": resnet, "resnet101@authors": resnet}
    if own == "maxblur":
        declared["vgg16@authors"] = PoolerNetwork(None, "adobe/antialiased-cnns antialiased_cnns/vgg.py",
                                                  note="MaxBlurPool at VGG's five max pools: the paper's sites")
    return declared


# MACs: the binomial f×f blur sampled at the pooled grid
@register("blurpool", "vectorized", params="0", family="baseline",
          macs=lambda g, o: _blur_macs(o) * g.outputs(), networks=_antialiased("blurpool"))
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
          macs=lambda g, o: _maxblur_max_macs(g) + _blur_macs(o) * g.outputs(), networks=_antialiased("maxblur"))
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
