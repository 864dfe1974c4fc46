"""S3Pool (Zhai et al., CVPR 2017): stride-1 max pooling, then stochastic spatial sampling.

Step 1 is ``max_pool2d(x, k, stride=1, padding=p)``; step 2 keeps, in every
cell of ``grid_size`` rows (columns), ``grid_size / stride`` randomly chosen
rows (columns) in order (:func:`poolbench.stochastic.s3_sample`).  The stride-1
map has H + 2p − k + 1 rows and step 2 keeps ceil of that over ``stride``,
which is exactly the standard pooled size floor((H + 2p − k)/s) + 1, so S3Pool
swaps in for any pooling layer.

Eval mode is deterministic: every ``stride``-th row and column, i.e. plain
``max_pool2d(x, k, s, p)``.  The gradient flows through the max and the kept
rows (``differentiable=True``, like max pooling); the row choice is not
differentiated.  Randomness: the module's own generator (``seed=`` or
``generator=``, ``reseed()`` replays), one draw per batch as in the paper.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from poolbench.base import Pool2d
from poolbench.registry import register
from poolbench.stochastic import Seeded, s3_sample


# MACs: max at stride 1, then row/column sampling (no arithmetic)
@register("s3pool", "vectorized", params="0", stochastic=True, family="baseline",
          macs=lambda g, o: g.taps * g.outputs(1))
class S3Pool(Seeded, Pool2d):
    """Stride-1 max pooling, then S3 random row/column sampling on a g×g grid (eval: every s-th)."""

    def __init__(self, channels, kernel_size=2, stride=2, padding=0, *, grid_size: int | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None):
        super().__init__(channels, kernel_size, stride, padding)
        grid_size = self.stride if grid_size is None else grid_size
        if isinstance(grid_size, bool) or not isinstance(grid_size, numbers.Integral) or grid_size <= 0 \
                or grid_size % self.stride:
            raise ValueError(f"grid_size must be a positive multiple of stride ({self.stride}), got {grid_size!r}")
        self.grid_size = int(grid_size)
        self.init_generator(seed, generator)

    def pool(self, x):
        dense = F.max_pool2d(x, self.kernel_size, 1, self.padding)
        return s3_sample(dense, self.stride, self.grid_size, self.training, self.generator)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid_size={self.grid_size}"
