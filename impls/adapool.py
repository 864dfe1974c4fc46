"""AdaPool (Stergiou & Poppe, IEEE TIP 2022): a β-blend of eDSCW and eM pooling.

    y    = β·eDSCW(window) + (1 − β)·eM(window)
    eM   = Σ_q softmax_q(x_q)·x_q                            (= SoftPool)
    eDSCW= Σ_q softmax_q(DSC(x_q, x̄))·x_q,   x̄ = window mean,
    DSC(a, b) = 2·|a·b| / (a² + b²)  ∈ [0, 1]                (Dice-Sørensen coefficient)

The exponents and the blend are the authors' CUDA kernels (alexandrosstergiou/
adaPool, pytorch/CUDA/adapool_cuda_kernel.cu: ``dsc`` = 2·abs(x1·x2)/(x1²+x2²)
of each value with the window mean, weights e^dist / Σ e^dist, and the
non-native path ``beta·EDSCW + (1−beta)·EM`` of ``adapool2d`` in
pytorch/adaPool/idea.py).  The absolute value matters on signed input: an
earlier revision of that kernel (``jvs``) used the signed 2·x1·x2/(x1²+x2²),
whose weights fall to e^[−1, 1] wherever a value and the window mean differ
in sign; the current one keeps them in e^[0, 1], and so does poolbench.

β, two forms (``beta_shape``):

* ``None`` (default): β learned **per channel** (C parameters), kept in
  (0, 1) by a sigmoid, initialised to ``beta`` (0.5) — swappable at any
  input size, like every other pooler.
* ``(oH, oW)``: the official form — one β per output position, shared by all
  channels (oH·oW parameters), initialised as ``AdaPool2d`` does
  (``clamp(randn(oH, oW), 0, 1)``) and used as is in the blend (the official
  class's ``beta.data.clamp`` is not in place, so training is unconstrained).
  It ties the layer to one input size; another size raises ValueError.

The authors' network (alexandrosstergiou/adaPool, ``main/models/resnet.py``,
``use_adapool=True``): torchvision's ResNet with the stem's max pool replaced
by ``AdaPool2d(kernel_size=(2, 2), stride=(2, 2))``, nothing else.  That file
builds ``AdaPool2d`` without ``beta``, which the class's own assertion
refuses; the paper's β is one per output position (56×56 = 3136 parameters at
224²).  Here the network uses the per-channel β (64 parameters), which runs at
every input size; ``beta_shape`` gives the official map for one size.  The
repository has no VGG.

Padding is honoured (padded positions are not in the window); the official
kernel has no padding, so the two agree wherever padding is 0.

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

from poolbench.impls._window import compute_dtype, softmax_pool, unfold_windows
from poolbench.base import Pool2d
from poolbench.impls.softpool import stem_pool_resnet
from poolbench.registry import PoolerNetwork, register


def dice_sorensen(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """DSC(a, b) = 2|ab|/(a² + b²) in [0, 1], overflow-free; DSC(0, 0) = 1."""
    scale = torch.maximum(a.abs(), b.abs()).detach()
    nonzero = scale > 0
    scale = torch.where(nonzero, scale, torch.ones_like(scale))
    a, b = a / scale, b / scale
    denominator = a * a + b * b  # ≥ 1 wherever nonzero
    ratio = 2 * (a * b).abs() / torch.where(nonzero, denominator, torch.ones_like(denominator))
    return torch.where(nonzero, ratio, torch.ones_like(ratio))


@register(
    "adapool",
    "vectorized",
    params="C",
    param_count=lambda channels, kernel_size: channels,
    # eM (softmax-weighted sum, 7 per tap) + eDSCW (window mean 1, Dice-Sørensen 2|xm|/(x²+m²) 7,
    # softmax-weighted sum 7 per tap) and the β blend (4)
    macs=lambda g, o: (22 * g.taps + 4) * g.outputs(),
    family="baseline",
    networks={name: PoolerNetwork(stem_pool_resnet, "alexandrosstergiou/adaPool main/models/resnet.py",
                                  note="AdaPool2d(2, 2) at the stem only; per-channel β (64) instead of the "
                                       "official 56×56 map at 224² (3136)")
              for name in ("resnet50@authors", "resnet101@authors")},
)
class AdaPool(Pool2d):
    """β·eDSCW + (1−β)·eM; β = sigmoid(θ) per channel, or the official output-sized β map (Stergiou & Poppe 2022)."""

    def __init__(self, channels, kernel_size=2, stride=2, padding=0, *, beta: float | None = None,
                 beta_shape: tuple[int, int] | None = None):
        super().__init__(channels, kernel_size, stride, padding)
        if beta_shape is None:
            beta = 0.5 if beta is None else beta
            if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 < beta < 1:
                raise ValueError(f"beta must be a number strictly between 0 and 1 (it is learned as a logit), got {beta!r}")
            self.beta_logit = nn.Parameter(torch.full((channels,), math.log(beta / (1 - beta))))
            self.beta_map = None
            return
        if beta is not None:
            raise ValueError("pass beta (per-channel initial value) or beta_shape (official random β map), not both")
        if not (isinstance(beta_shape, (tuple, list)) and len(beta_shape) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in beta_shape)):
            raise ValueError(f"beta_shape must be the pooled size (oH, oW) as two positive ints, got {beta_shape!r}")
        self.beta_logit = None
        self.beta_map = nn.Parameter(torch.randn(tuple(beta_shape)).clamp_(0.0, 1.0))

    @property
    def beta(self) -> torch.Tensor:
        """β: per channel, shape (C,), or the official map, shape (oH, oW)."""
        return torch.sigmoid(self.beta_logit) if self.beta_map is None else self.beta_map

    def _blend_weight(self, windows, dtype) -> torch.Tensor:
        if self.beta_map is None:
            return torch.sigmoid(self.beta_logit.to(dtype)).view(1, -1, 1)
        if tuple(self.beta_map.shape) != (windows.out_h, windows.out_w):
            raise ValueError(f"this AdaPool's beta map is {tuple(self.beta_map.shape)} but the input pools to "
                             f"{windows.out_h}x{windows.out_w}; the official β ties the layer to one input size")
        return self.beta_map.to(dtype).reshape(1, 1, -1)

    def pool(self, x):
        xc = x.to(compute_dtype(x.dtype))
        windows = unfold_windows(xc, self.kernel_size, self.stride, self.padding)
        exp_max = softmax_pool(windows, windows.values)
        exp_dice = softmax_pool(windows, dice_sorensen(windows.values, windows.mean()))
        beta = self._blend_weight(windows, xc.dtype)
        return windows.fold(beta * exp_dice + (1 - beta) * exp_max).to(x.dtype)

    def extra_repr(self) -> str:
        form = "per channel" if self.beta_map is None else f"map {tuple(self.beta_map.shape)}"
        return f"{super().extra_repr()}, beta={form}"
