"""LIP, Local Importance-based Pooling (Gao, Wang & Wu, ICCV 2019).

    y = Σ_q e^{l_q}·x_q / Σ_q e^{l_q}     over each window
    l = 12 · sigmoid(IN_γ,β(w ⊛ x))       (logits at the input's resolution)

This follows the authors' code (sebgao/LIP, imagenet/lip_resnet.py):
``lip2d`` is ``avg_pool2d(x·e^l) / avg_pool2d(e^l)`` — the ratio of window
*sums*, since the counts cancel, so padding adds nothing — and the logit
module of their ``SimplifiedLIP`` is ``Conv2d(C, C, 3, padding=1,
bias=False)`` → ``InstanceNorm2d(C, affine=True)`` → ``SoftGate``
(12·sigmoid), with the conv weight initialised to 0 (``init_layer``), so LIP
starts as average pooling (constant logits 6).

``logit_conv`` chooses the 3×3 convolution:

* ``"full"`` (default, official): C→C, 9·C² weights; parameters 9·C² + 2·C
  (with InstanceNorm's γ, β), the overhead the LIP paper reports.
* ``"depthwise"``: one 3×3 filter per channel (C×1×3×3), 9·C + 2·C = 11·C
  parameters — a much cheaper variant, not the authors'.

Numerics: the window weights are a max-subtracted softmax of l (bounded in
(0, 12) anyway); the instance norm is written out (biased variance, eps 1e-5
as nn.InstanceNorm2d) so that 1×1 maps, which nn.InstanceNorm2d rejects,
just normalise to β.  Half precision runs in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from poolbench.impls._window import compute_dtype, softmax_pool, unfold_windows
from poolbench.base import Pool2d
from poolbench.registry import register

#: The authors' SoftGate scale: logits lie in (0, COEFF).
COEFF = 12.0
INSTANCE_NORM_EPS = 1e-5


LOGIT_CONVS = ("full", "depthwise")


def lip_param_count(channels: int, logit_conv: str = "full") -> int:
    """Learned parameters of one LIP layer: the 3×3 logit conv plus InstanceNorm's γ and β."""
    conv = 9 * channels * channels if logit_conv == "full" else 9 * channels
    return conv + 2 * channels


@register(
    "lip",
    "vectorized",
    params="9·C² + 2·C",
    param_count=lambda channels, kernel_size: lip_param_count(channels),
    # logits on every input element: C→C (official) or depthwise 3×3 conv (9·C or 9 per element), instance norm
    # (mean, −, ², mean, ·rsqrt, affine 2 → 7), 12·sigmoid (2); then a softmax-weighted window sum (7 per tap)
    macs=lambda g, o: (9 * (1 if o.get("logit_conv") == "depthwise" else g.channels) + 9) * g.inputs
    + 7 * g.taps * g.outputs(),
    family="baseline",
)
class LIPPool(Pool2d):
    """Σ e^l·x / Σ e^l with logits l = 12·sigmoid(InstanceNorm(3×3 conv of x)) (Gao et al. 2019)."""

    def __init__(self, channels, kernel_size=2, stride=2, padding=0, *, logit_conv: str = "full"):
        super().__init__(channels, kernel_size, stride, padding)
        if logit_conv not in LOGIT_CONVS:
            raise ValueError(f"logit_conv must be one of {', '.join(LOGIT_CONVS)}, got {logit_conv!r}")
        self.logit_conv = logit_conv
        in_per_group = channels if logit_conv == "full" else 1
        self.logit_weight = nn.Parameter(torch.zeros(channels, in_per_group, 3, 3))
        self.norm_weight = nn.Parameter(torch.ones(channels))
        self.norm_bias = nn.Parameter(torch.zeros(channels))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The importance logits l (N, C, H, W), in (0, 12)."""
        groups = 1 if self.logit_conv == "full" else self.channels
        z = F.conv2d(x, self.logit_weight.to(x.dtype), padding=1, groups=groups)
        mean = z.mean((2, 3), keepdim=True)
        var = (z - mean).square().mean((2, 3), keepdim=True)
        z = (z - mean) * torch.rsqrt(var + INSTANCE_NORM_EPS)
        z = z * self.norm_weight.to(x.dtype).view(1, -1, 1, 1) + self.norm_bias.to(x.dtype).view(1, -1, 1, 1)
        return COEFF * torch.sigmoid(z)

    def pool(self, x):
        xc = x.to(compute_dtype(x.dtype))
        windows = unfold_windows(xc, self.kernel_size, self.stride, self.padding)
        return windows.fold(softmax_pool(windows, windows.unfold(self.logits(xc)))).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, logit_conv={self.logit_conv}"
