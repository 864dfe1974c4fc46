"""Window gathering shared by the baselines that weight values inside a window.

SoftPool, LIP, AdaPool, Lp and stochastic pooling all need, for every output
position, the k×k values under its window *and* which of them are real input
(not padding): padded positions neither vote nor get averaged (the paper's windows), like
``avg_pool2d(count_include_pad=False)``.  ``unfold`` gives both for any
(kernel_size, stride, padding), overlapping or not, in plain PyTorch; the
k² axis then carries the per-window reductions (softmax, max, sampling).

Not a pooler: importing this module registers nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from poolbench.base import compute_dtype
from poolbench.validation import pooled_size

__all__ = ["Windows", "compute_dtype", "max_avg_blend", "softmax_pool", "unfold_windows"]


@dataclass(frozen=True)
class Windows:
    """The windows of one input, laid out as (N, C, k², L) with L = H_out·W_out.

    ``values`` holds 0 at padded positions; ``inside`` (1, 1, k², L, bool) says
    which positions are real input and ``count`` (1, 1, 1, L) how many there
    are per window (always ≥ 1: padding is capped at kernel_size // 2).
    """

    values: torch.Tensor
    inside: torch.Tensor
    count: torch.Tensor
    kernel_size: int
    stride: int
    padding: int
    out_h: int
    out_w: int

    def unfold(self, t: torch.Tensor) -> torch.Tensor:
        """Windows of another full-resolution map ``t`` (N', C', H, W) with the same geometry."""
        return _unfold(t, self.kernel_size, self.stride, self.padding)

    def fold(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, C, L) per-window results → (N, C, H_out, W_out)."""
        return pooled.reshape(*pooled.shape[:2], self.out_h, self.out_w)

    def mean(self) -> torch.Tensor:
        """Mean of the real (non-padded) values of each window, (N, C, 1, L)."""
        return self.values.sum(2, keepdim=True) / self.count


def _unfold(t: torch.Tensor, kernel_size: int, stride: int, padding: int) -> torch.Tensor:
    batch, channels = t.shape[:2]
    cols = F.unfold(t, kernel_size, padding=padding, stride=stride)
    return cols.view(batch, channels, kernel_size * kernel_size, cols.shape[-1])


def unfold_windows(x: torch.Tensor, kernel_size: int, stride: int, padding: int) -> Windows:
    """Gather the pooling windows of ``x`` (N, C, H, W); see :class:`Windows`."""
    height, width = x.shape[-2:]
    out_h = pooled_size(height, kernel_size, stride, padding)
    out_w = pooled_size(width, kernel_size, stride, padding)
    inside = _unfold(x.new_ones(1, 1, height, width), kernel_size, stride, padding) > 0
    count = inside.sum(2, keepdim=True).to(x.dtype)
    return Windows(_unfold(x, kernel_size, stride, padding), inside, count, kernel_size, stride, padding, out_h, out_w)


def softmax_pool(windows: Windows, logits: torch.Tensor) -> torch.Tensor:
    """Σ_q softmax(ℓ)_q · x_q over the real positions of each window → (N, C, L).

    ``logits`` is (N, C, k², L) like ``windows.values``.  ``torch.softmax``
    subtracts the window maximum before exponentiating, so logits of 1e4 do
    not overflow in float32; padded positions get logit −∞ (weight 0).
    """
    weights = torch.softmax(logits.masked_fill(~windows.inside, float("-inf")), dim=2)
    return (weights * windows.values).sum(2)


def max_avg_blend(x: torch.Tensor, mix: torch.Tensor, kernel_size: int, stride: int, padding: int) -> torch.Tensor:
    """``mix·max + (1 − mix)·avg`` over each window (Lee et al. 2016's mixed and gated pooling).

    ``mix`` broadcasts against the pooled map (a scalar, or one value per
    window).  The average skips padded positions, as every poolbench pooler does.
    """
    k, s, p = kernel_size, stride, padding
    return mix * F.max_pool2d(x, k, s, p) + (1 - mix) * F.avg_pool2d(x, k, s, p, count_include_pad=False)
