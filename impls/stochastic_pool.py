"""Stochastic pooling (Zeiler & Fergus, ICLR 2013).

With activations a = relu(x) and P_q = a_q / Σ_window a (Zeiler & Fergus, ICLR 2013):

* train: each window outputs one of its own values x_q, drawn with
  probability P_q (one independent draw per window, batch and channel);
* eval: the probability-weighted mean Σ_q P_q·x_q — the expectation of the
  train-mode output, as in the paper's test-time "probabilistic weighting".

A window without any positive value (Σ a = 0, e.g. all zeros after a ReLU)
falls back to the uniform distribution over its real positions, so train
still returns an element of the window and eval is then the window average
(= 0 for post-ReLU input, the paper's case).  Padded positions have P = 0.

Gradient (``differentiable=True``): in train mode the draw is held fixed and
the gradient flows to the sampled element only, exactly as max pooling routes
it to the argmax — this is how the paper trains; the draw itself is not
differentiated (no score-function term).  gradcheck passes in eval mode, and
in train mode with ``reseed()`` before each forward.

Randomness comes from the module's own CPU generator (``seed=`` or
``generator=``; ``reseed()`` replays), drawn in float64 on the CPU and moved
to the input's device, so a seed gives the same samples on every device and
dtype.  Half precision runs in float32.
"""
from __future__ import annotations

import torch

from poolbench.impls._window import Windows, compute_dtype, unfold_windows
from poolbench.base import Pool2d
from poolbench.registry import register
from poolbench.stochastic import Seeded


def sampling_probabilities(windows: Windows) -> torch.Tensor:
    """P ∝ relu(x) over each window's real positions, uniform where no value is positive: (N, C, k², L)."""
    activation = windows.values.clamp(min=0)  # padded positions are 0
    total = activation.sum(2, keepdim=True)
    positive = total > 0
    uniform = windows.inside.to(activation.dtype) / windows.count
    return torch.where(positive, activation / torch.where(positive, total, torch.ones_like(total)), uniform)


# MACs (eval): Σx, p = x/Σx, p·x, Σ (4 per tap)
@register("stochastic", "vectorized", params="0", stochastic=True, family="baseline",
          macs=lambda g, o: 4 * g.taps * g.outputs())
class StochasticPool(Seeded, Pool2d):
    """Train: sample one value per window with P ∝ relu(x); eval: Σ P·x (Zeiler & Fergus 2013)."""

    def __init__(self, channels, kernel_size=2, stride=2, padding=0, *,
                 seed: int | None = None, generator: torch.Generator | None = None):
        super().__init__(channels, kernel_size, stride, padding)
        self.init_generator(seed, generator)

    def pool(self, x):
        windows = unfold_windows(x.to(compute_dtype(x.dtype)), self.kernel_size, self.stride, self.padding)
        if not self.training:
            pooled = (sampling_probabilities(windows) * windows.values).sum(2)
        else:
            pooled = windows.values.gather(2, self.sample(windows)).squeeze(2)
        return windows.fold(pooled).to(x.dtype)

    def sample(self, windows: Windows) -> torch.Tensor:
        """Index (N, C, 1, L) of the drawn position of each window (inverse-CDF sampling)."""
        with torch.no_grad():
            cdf = sampling_probabilities(windows).cumsum(2)
            shape = (*cdf.shape[:2], 1, cdf.shape[-1])
            # u in (0, 1], so the first position whose CDF reaches u·total has P > 0.
            u = 1 - torch.rand(shape, generator=self.generator, dtype=torch.float64)
            target = u.to(device=cdf.device, dtype=cdf.dtype) * cdf[:, :, -1:]
            index = (cdf < target).sum(2, keepdim=True)
            return index.clamp_(max=cdf.shape[2] - 1)
