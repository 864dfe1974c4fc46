"""DPP reference tier: the equations written out window by window, in float64.

This is the ground truth every other tier is compared with, so it favours
plainness over speed or range: it loops over output positions, evaluates
w = α + ρ_λ(I[q] − Ĩ[p]) directly (eq. 5-7) and the 3×3 guide tap by tap
(eq. 10).  It is exact as long as (x² + ε²)^(λ/2) fits in float64 (e.g. λ ≤ 50
at |x| ≤ 1e4); the fast tiers' log-domain numerics cover the rest.
"""
from __future__ import annotations

import torch

from poolbench.dpp import register_dpp_tier
from poolbench.validation import pooled_size


def _window(size: int, index: int, kernel_size: int, stride: int, padding: int) -> slice:
    start = index * stride - padding
    return slice(max(start, 0), min(start + kernel_size, size))


def _full_guide(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """Ĩ_F[p] = Σ_{q∈3×3 around (row, col)} F[q]·I[q] + b, zero outside the image (conv padding 1)."""
    height, width = x.shape[-2:]
    value = bias.expand(x.shape[0], -1).clone()
    for dy in range(3):
        for dx in range(3):
            r, c = row + dy - 1, col + dx - 1
            if 0 <= r < height and 0 <= c < width:
                value = value + weight[:, 0, dy, dx] * x[:, :, r, c]
    return value


def dpp_reference(x, alpha, lam, guide, args):
    kernel_size, stride, padding, asym, eps2, scale_invariant = args.op_arguments()
    x64 = x.double()
    alpha64, lam64 = alpha.double().view(1, -1, 1, 1), lam.double().view(1, -1, 1, 1)
    height, width = x.shape[-2:]
    out_h = pooled_size(height, kernel_size, stride, padding)
    out_w = pooled_size(width, kernel_size, stride, padding)
    rows = []
    for i in range(out_h):
        cols = []
        for j in range(out_w):
            window = x64[:, :, _window(height, i, kernel_size, stride, padding), _window(width, j, kernel_size, stride, padding)]
            if guide is None:
                centre = window.mean(dim=(2, 3))
            else:
                weight, bias = guide
                centre = _full_guide(x64, weight.double(), bias.double(), i * stride, j * stride)
            deviation = window - centre[:, :, None, None]
            if asym:
                deviation = deviation.clamp(min=0)
            charbonnier = deviation * deviation + eps2
            if scale_invariant:
                charbonnier = charbonnier / charbonnier.mean(dim=(2, 3), keepdim=True)
            weights = alpha64 + charbonnier ** (lam64 / 2)
            cols.append((weights * window).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)))
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2).to(x.dtype)


register_dpp_tier(
    "reference",
    dpp_reference,
    description="float64 window-by-window loop: the ground truth",
)
