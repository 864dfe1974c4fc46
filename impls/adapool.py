"""AdaPool (Stergiou & Poppe, IEEE TIP 2022): a β-blend of eDSCW and eM pooling.

    y    = β_c·eDSCW(window) + (1 − β_c)·eM(window),     β_c = sigmoid(θ_c)
    eM   = Σ_q softmax_q(x_q)·x_q                            (= SoftPool)
    eDSCW= Σ_q softmax_q(DSC(x_q, x̄))·x_q,   x̄ = window mean,
    DSC(a, b) = 2ab / (a² + b²)                              (Dice-Sørensen coefficient)

The exponents and the blend are the authors' CUDA kernels (alexandrosstergiou/
adaPool, pytorch/CUDA/adapool_cuda_kernel.cu: ``jvs`` = 2·x1·x2/(x1²+x2²) of
each value with the window mean, weights e^dist / Σ e^dist, and the
non-native path ``β·EJVSW + (1−β)·EM`` in pytorch/adaPool/idea.py).

Two deliberate changes, so AdaPool is swappable like every other pooler:

* β is learned **per channel** (C parameters), kept in (0, 1) by a sigmoid,
  initialised to 0.5 (``beta=`` option).  The official β is a map of the
  pooled size (oH × oW), clamped to [0, 1] and randomly initialised, which
  ties a layer to one input resolution.
* padding is honoured (padded positions are not in the window, as for every poolbench pooler).

Numerics: eM is a max-subtracted softmax (no overflow at |x| = 1e4); DSC is
computed on a and b divided by max(|a|, |b|) (detached — DSC is scale
invariant, so the gradient is exact), so a² + b² cannot overflow, and
DSC(0, 0) := 1 (identical values) instead of the kernel's 0/0 = NaN which it
then replaces by ``nan_to_num``.  Half precision runs in float32.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from impls._window import compute_dtype, softmax_pool, unfold_windows
from poolbench.base import Pool2d
from poolbench.registry import register


def dice_sorensen(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """DSC(a, b) = 2ab/(a² + b²) in [−1, 1], overflow-free; DSC(0, 0) = 1."""
    scale = torch.maximum(a.abs(), b.abs()).detach()
    nonzero = scale > 0
    scale = torch.where(nonzero, scale, torch.ones_like(scale))
    a, b = a / scale, b / scale
    denominator = a * a + b * b  # ≥ 1 wherever nonzero
    ratio = 2 * a * b / torch.where(nonzero, denominator, torch.ones_like(denominator))
    return torch.where(nonzero, ratio, torch.ones_like(ratio))


@register(
    "adapool",
    "vectorized",
    params="C",
    param_count=lambda channels, kernel_size: channels,
    # eM (softmax-weighted sum, 7 per tap) + eDSCW (window mean 1, Dice-Sørensen 2xm/(x²+m²) 6,
    # softmax-weighted sum 7 per tap) and the β blend (4)
    macs=lambda g, o: (21 * g.taps + 4) * g.outputs(),
    family="baseline",
)
class AdaPool(Pool2d):
    """β·eDSCW + (1−β)·eM with β = sigmoid(θ) learned per channel (Stergiou & Poppe 2022)."""

    def __init__(self, channels, kernel_size=2, stride=2, padding=0, *, beta: float = 0.5):
        super().__init__(channels, kernel_size, stride, padding)
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 < beta < 1:
            raise ValueError(f"beta must be a number strictly between 0 and 1 (it is learned as a logit), got {beta!r}")
        self.beta_logit = nn.Parameter(torch.full((channels,), math.log(beta / (1 - beta))))

    @property
    def beta(self) -> torch.Tensor:
        """The per-channel blend weight β of eDSCW, shape (C,)."""
        return torch.sigmoid(self.beta_logit)

    def pool(self, x):
        xc = x.to(compute_dtype(x.dtype))
        windows = unfold_windows(xc, self.kernel_size, self.stride, self.padding)
        exp_max = softmax_pool(windows, windows.values)
        exp_dice = softmax_pool(windows, dice_sorensen(windows.values, windows.mean()))
        beta = torch.sigmoid(self.beta_logit.to(xc.dtype)).view(1, -1, 1)
        return windows.fold(beta * exp_dice + (1 - beta) * exp_max).to(x.dtype)
