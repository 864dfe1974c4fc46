"""LIP, Local Importance-based Pooling (Gao, Wang & Wu, ICCV 2019).

    y = Σ_q e^{l_q}·x_q / Σ_q e^{l_q}     over each window
    l = 12 · sigmoid(IN_γ,β(w ⊛ x))       (logits at the input's resolution)

This follows the authors' code (sebgao/LIP, imagenet/lip_resnet.py):
``lip2d`` is ``avg_pool2d(x·e^l) / avg_pool2d(e^l)`` — the ratio of window
*sums*, since the counts cancel, so padding adds nothing — and the logit
module of their ``SimplifiedLIP`` is conv3×3 → InstanceNorm2d(affine) →
``SoftGate`` (12·sigmoid), with the conv weight initialised to 0, so LIP
starts as average pooling (constant logits 6).

One deliberate change keeps the module small: the 3×3 conv is depthwise
(w: C×1×3×3, no bias) instead of the official full C→C conv (9C² weights).
Parameters: 9C (conv) + 2C (InstanceNorm γ, β) = 11·C.

Numerics: the window weights are a max-subtracted softmax of l (bounded in
(0, 12) anyway); the instance norm is written out (biased variance, eps 1e-5
as nn.InstanceNorm2d) so that 1×1 maps, which nn.InstanceNorm2d rejects,
just normalise to β.  Half precision runs in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from impls._window import compute_dtype, softmax_pool, unfold_windows
from poolbench.base import Pool2d
from poolbench.registry import register

#: The authors' SoftGate scale: logits lie in (0, COEFF).
COEFF = 12.0
INSTANCE_NORM_EPS = 1e-5


@register(
    "lip",
    "vectorized",
    params="11·C",
    param_count=lambda channels, kernel_size: 11 * channels,
    # logits on every input element: depthwise 3×3 conv (9), instance norm (mean, −, ², mean, ·rsqrt, affine 2
    # → 7), 12·sigmoid (2); then a softmax-weighted window sum (7 per tap)
    macs=lambda g, o: 18 * g.inputs + 7 * g.taps * g.outputs(),
    family="baseline",
)
class LIPPool(Pool2d):
    """Σ e^l·x / Σ e^l with logits l = 12·sigmoid(InstanceNorm(depthwise 3×3 conv of x)) (Gao et al. 2019)."""

    def __init__(self, channels, kernel_size=2, stride=2, padding=0):
        super().__init__(channels, kernel_size, stride, padding)
        self.logit_weight = nn.Parameter(torch.zeros(channels, 1, 3, 3))
        self.norm_weight = nn.Parameter(torch.ones(channels))
        self.norm_bias = nn.Parameter(torch.zeros(channels))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The importance logits l (N, C, H, W), in (0, 12)."""
        z = F.conv2d(x, self.logit_weight.to(x.dtype), padding=1, groups=self.channels)
        mean = z.mean((2, 3), keepdim=True)
        var = (z - mean).square().mean((2, 3), keepdim=True)
        z = (z - mean) * torch.rsqrt(var + INSTANCE_NORM_EPS)
        z = z * self.norm_weight.to(x.dtype).view(1, -1, 1, 1) + self.norm_bias.to(x.dtype).view(1, -1, 1, 1)
        return COEFF * torch.sigmoid(z)

    def pool(self, x):
        xc = x.to(compute_dtype(x.dtype))
        windows = unfold_windows(xc, self.kernel_size, self.stride, self.padding)
        return windows.fold(softmax_pool(windows, windows.unfold(self.logits(xc)))).to(x.dtype)
