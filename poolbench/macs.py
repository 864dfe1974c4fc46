"""What a pooler's MAC formula is written against: one call's window geometry.

A pooler declares its arithmetic next to its parameter count
(``@register(..., macs=formula)``), written from its definition, so the FLOP
counters can price a fused kernel they cannot look into and the report can
show how far a plain-PyTorch tier's op count exceeds the definition.  Unit:
multiply-accumulates (fvcore's convention).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

from .validation import pooled_size

__all__ = ["PoolGeometry", "dpp_macs"]


@dataclass(frozen=True)
class PoolGeometry:
    """An (N, C, H, W) input pooled with a square ``kernel_size`` window."""

    batch: int
    channels: int
    height: int
    width: int
    kernel_size: int
    stride: int
    padding: int

    def outputs(self, stride: int | None = None) -> int:
        """Output elements at ``stride`` (default the pooler's own)."""
        s = self.stride if stride is None else stride
        k, p = self.kernel_size, self.padding
        return self.batch * self.channels * pooled_size(self.height, k, s, p) * pooled_size(self.width, k, s, p)

    @property
    def inputs(self) -> int:
        return self.batch * self.channels * self.height * self.width

    @property
    def taps(self) -> int:
        """Window positions, k²."""
        return self.kernel_size * self.kernel_size


def _dpp_per_output(taps: int, asym: bool, full: bool) -> int:
    # guide Ĩ: box filter (k² adds) or depthwise 3×3 conv (9 MACs + bias);
    # per tap: d = I−Ĩ [+ max(0,·)], d²+ε² (2), log, ·λ/2, −M, exp, +α e^{−M}, w·x, Σw·x, Σw  → 10 (+1);
    # per window: M = max over taps (k²), α e^{−M} = exp(log α − M) (2), Σw·x / Σw (1).
    guide = 10 if full else taps
    return guide + (11 if asym else 10) * taps + taps + 3


def dpp_macs(asym: bool, full: bool, stochastic: bool = False):
    """The MAC formula of a DPP variant (Saeedan et al., CVPR 2018, eq. 4-10)."""
    def formula(g: PoolGeometry, options: Mapping[str, object]) -> int:
        if not stochastic:
            return _dpp_per_output(g.taps, asym, full) * g.outputs()
        # S3DPP (eval, as the authors build it): DPP at stride 1 on the input replicate-padded by s−1 at the
        # bottom/right, then an s×s average at stride s.
        padded = replace(g, height=g.height + g.stride - 1, width=g.width + g.stride - 1)
        return _dpp_per_output(g.taps, asym, full) * padded.outputs(1) + g.stride**2 * g.outputs()
    return formula
