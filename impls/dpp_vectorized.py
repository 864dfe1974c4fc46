"""DPP vectorized tier: batched tensor ops, log-domain weights (see poolbench.dpp).

Windows are gathered with ``unfold`` (so every k/s/pad works, overlapping or
not), padded positions are masked out of the window, and the weights are
computed as

    ℓ_q = (λ/2)·log(d_q² + ε²),  M = max(max_q ℓ_q, log α),
    w_q ∝ exp(ℓ_q − M) + exp(log α − M),

which neither overflows for large deviations nor underflows to 0/0 on flat
windows at large λ.  M is detached: the output is invariant to it, so the
gradient is exact without differentiating the max.  fp16/bf16 inputs are
computed in float32 and cast back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from poolbench.base import compute_dtype
from poolbench.dpp import register_dpp_tier


#: |d| above which d² would overflow (or come close) in the compute dtype: log(d² + ε²) is then
#: formed as 2·log|d| + log1p(ε²/d²), the same form every tier uses.
HUGE_DEVIATION = {torch.float32: 1e15, torch.float64: 1e150}


def _may_branch_on_data() -> bool:
    """Whether a branch on tensor values is safe and invisible: plain eager execution only.

    Under torch.compile it would break the graph, under fake tensors it cannot be decided, and
    under a tracer or dispatch mode (fvcore's jit trace, FlopCounterMode) the two counters would
    see different ops; there both forms are computed (they fuse into one kernel when compiled).
    """
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing()
                or _get_current_dispatch_mode() is not None)


def log_charbonnier(deviation: torch.Tensor, eps2: float) -> torch.Tensor:
    """log(d² + ε²), finite (with finite gradients) for every finite d, also where d² overflows."""
    huge = deviation.abs() > HUGE_DEVIATION.get(deviation.dtype, 1e15)
    if _may_branch_on_data() and not bool(huge.any()):  # plain eager: skip the second form when unused
        return torch.log(deviation * deviation + eps2)
    # Both branches see values that are safe for them, so neither leaks inf/NaN into the gradient.
    large = torch.where(huge, deviation, torch.ones_like(deviation)).abs()
    small = torch.where(huge, torch.zeros_like(deviation), deviation)
    eps = eps2 ** 0.5
    return torch.where(huge, 2 * torch.log(large) + torch.log1p((eps / large) ** 2), torch.log(small * small + eps2))


def dpp_guide(x, kernel_size, stride, padding, guide):
    """Ĩ on the pooled grid: the window's box filter (Lite) or the learned 3×3 filter (Full)."""
    if guide is None:
        return F.avg_pool2d(x, kernel_size, stride, padding, count_include_pad=False)
    weight, bias = guide
    return F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), stride=stride, padding=1, groups=x.shape[1])


def dpp_vectorized(x, alpha, lam, guide, args):
    kernel_size, stride, padding, asym, eps2, scale_invariant = args.op_arguments()
    dtype = compute_dtype(x.dtype)
    xc = x.to(dtype)
    batch, channels, height, width = x.shape
    centre = dpp_guide(xc, kernel_size, stride, padding, guide)
    out_h, out_w = centre.shape[-2:]
    taps = kernel_size * kernel_size
    windows = F.unfold(xc, kernel_size, padding=padding, stride=stride).view(batch, channels, taps, out_h * out_w)
    inside = F.unfold(xc.new_ones(1, 1, height, width), kernel_size, padding=padding, stride=stride)
    inside = inside.view(1, 1, taps, out_h * out_w) > 0

    deviation = windows - centre.reshape(batch, channels, 1, out_h * out_w)
    if asym:
        deviation = deviation.clamp(min=0)
    log_c = log_charbonnier(deviation, eps2)
    if scale_invariant:
        mean = (log_c.exp() * inside).sum(2, keepdim=True) / inside.sum(2, keepdim=True)
        log_c = log_c - mean.log()
    ell = (0.5 * lam.to(dtype)).view(1, channels, 1, 1) * log_c
    ell = ell.masked_fill(~inside, float("-inf"))

    alpha = alpha.to(dtype).view(1, channels, 1, 1)
    positive = alpha > 0
    log_alpha = torch.where(positive, torch.log(torch.where(positive, alpha, torch.ones_like(alpha))), float("-inf"))
    shift = torch.maximum(ell.amax(dim=2, keepdim=True), log_alpha).detach()
    # α = 0 exactly contributes nothing (and no NaN gradient through log 0).
    alpha_term = torch.where(positive, torch.exp(log_alpha - shift), torch.zeros_like(shift))
    weights = (torch.exp(ell - shift) + alpha_term) * inside
    out = (weights * windows).sum(2) / weights.sum(2)
    return out.view(batch, channels, out_h, out_w).to(x.dtype)


register_dpp_tier(
    "vectorized",
    dpp_vectorized,
    priority=20,
    description="unfold + log-domain weights in plain PyTorch",
)
