"""Gated max-average pooling (Lee, Gallagher & Tu, AISTATS 2016).

    y = a·max(window) + (1 − a)·avg(window),   a = sigmoid(ω · window)

where ω is a learned k×k gating mask shared by all channels of the layer
(k² parameters), so the mix adapts to each window's content.  ω·window is a
single-channel convolution applied to every channel; padded positions are
zeros there and so add nothing to it, and the average skips them.

ω starts at 0, so at init a = 0.5 everywhere and the layer equals mixed
pooling at its init (0.5·max + 0.5·avg).  Half precision runs in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from poolbench.impls._window import compute_dtype, max_avg_blend
from poolbench.base import Pool2d
from poolbench.registry import register


@register(
    "gated",
    "vectorized",
    params="k²",
    param_count=lambda channels, kernel_size: kernel_size * kernel_size,
    # gate ω·window (k²) and sigmoid, max, avg, blend
    macs=lambda g, o: (3 * g.taps + 5) * g.outputs(),
    family="baseline",
)
class GatedPool(Pool2d):
    """a·max + (1−a)·avg with a = sigmoid(ω·window), ω a learned k×k mask per layer."""

    def __init__(self, channels, kernel_size=2, stride=2, padding=0):
        super().__init__(channels, kernel_size, stride, padding)
        self.gate = nn.Parameter(torch.zeros(self.kernel_size, self.kernel_size))

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """a = sigmoid(ω · window) for every window of ``x``: (N, C, H_out, W_out)."""
        batch, channels, height, width = x.shape
        weight = self.gate.to(x.dtype).view(1, 1, self.kernel_size, self.kernel_size)
        scores = F.conv2d(x.reshape(batch * channels, 1, height, width), weight, stride=self.stride, padding=self.padding)
        return torch.sigmoid(scores).view(batch, channels, *scores.shape[-2:])

    def pool(self, x):
        xc = x.to(compute_dtype(x.dtype))
        return max_avg_blend(xc, self.gate_values(xc), self.kernel_size, self.stride, self.padding).to(x.dtype)
