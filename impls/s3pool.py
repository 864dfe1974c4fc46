"""S3Pool (Zhai et al., CVPR 2017): stride-1 max pooling, then stochastic spatial sampling.

Step 1 is ``max_pool2d(x, k, stride=1, padding=p)``; step 2 keeps, in every
cell of ``grid_size`` rows (columns), ``grid_size / stride`` randomly chosen
rows (columns) in order (:func:`poolbench.stochastic.s3_sample`).  The stride-1
map has H + 2p − k + 1 rows and step 2 keeps ceil of that over ``stride``,
which is exactly the standard pooled size floor((H + 2p − k)/s) + 1, so S3Pool
swaps in for any pooling layer.  This is the authors' ``StochasticPool2DLayer``
(Shuangfei/s3pool, build_net.py): a last, shorter cell keeps as many rows as
a full one would (when it has them), with ``grid_size`` defaulting to the
pool size.

Eval mode, ``eval_mode=`` option:

* ``"average"`` (default, official): the same layer with ``deterministic=True``
  average-pools the stride-1 max map with window and stride s and padding
  s // 2, padding excluded (Theano's ``average_exc_pad``): output i averages
  stride-1 rows i·s − s//2 … i·s − s//2 + s − 1.  On odd maps that gives one
  extra trailing row/column (the official layer only ran on even sizes), which
  is dropped so the output keeps the standard size.
* ``"max"``: every ``stride``-th row and column of the stride-1 map, i.e.
  plain ``max_pool2d(x, k, s, p)`` (poolbench's earlier choice).

The gradient flows through the max and the kept rows (like max pooling); the
row choice is not differentiated.  Randomness: the module's own generator
(``seed=`` or ``generator=``, ``reseed()`` replays), one draw per batch as in
the paper.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from poolbench.base import Pool2d
from poolbench.registry import register
from poolbench.stochastic import Seeded, s3_sample
from poolbench.validation import pooled_size


# MACs (eval, official): max at stride 1, then an s×s average at stride s (eval_mode="max": sampling only)
@register("s3pool", "vectorized", params="0", stochastic=True, family="baseline",
          macs=lambda g, o: g.taps * g.outputs(1) + (0 if o.get("eval_mode") == "max" else g.stride**2 * g.outputs()))
class S3Pool(Seeded, Pool2d):
    """Stride-1 max pooling, then S3 random row/column sampling on a g×g grid (eval: s×s average, official)."""

    EVAL_MODES = ("average", "max")

    def __init__(self, channels, kernel_size=2, stride=2, padding=0, *, grid_size: int | None = None,
                 eval_mode: str = "average", seed: int | None = None, generator: torch.Generator | None = None):
        super().__init__(channels, kernel_size, stride, padding)
        grid_size = self.stride if grid_size is None else grid_size
        if isinstance(grid_size, bool) or not isinstance(grid_size, numbers.Integral) or grid_size <= 0 \
                or grid_size % self.stride:
            raise ValueError(f"grid_size must be a positive multiple of stride ({self.stride}), got {grid_size!r}")
        if eval_mode not in self.EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {', '.join(self.EVAL_MODES)}, got {eval_mode!r}")
        self.grid_size, self.eval_mode = int(grid_size), eval_mode
        self.init_generator(seed, generator)

    def pool(self, x):
        dense = F.max_pool2d(x, self.kernel_size, 1, self.padding)
        if self.training or self.eval_mode == "max":
            return s3_sample(dense, self.stride, self.grid_size, self.training, self.generator)
        s = self.stride
        averaged = F.avg_pool2d(dense, s, s, s // 2, count_include_pad=False)
        out_h, out_w = (pooled_size(n, self.kernel_size, s, self.padding) for n in x.shape[-2:])
        return averaged[..., :out_h, :out_w]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid_size={self.grid_size}, eval_mode={self.eval_mode}"
