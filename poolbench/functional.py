"""Functional DPP: ``poolbench.functional.dpp(x, alpha, lam, ...)``.

Unlike the modules, the functional form takes α and λ directly (λ = 0 and
α = 0 are reachable), validates them, and runs the kernel of any tier.
"""
from __future__ import annotations

import torch

from .dpp import DEFAULT_EPS2, DPPArgs, check_dpp_params, check_full_guide, get_kernel
from .validation import check_geometry, check_input

__all__ = ["dpp"]


def dpp(
    x: torch.Tensor,
    alpha,
    lam,
    kernel_size: int = 2,
    stride: int = 2,
    padding: int = 0,
    asym: bool = False,
    guide: tuple[torch.Tensor, torch.Tensor] | None = None,
    eps2: float = DEFAULT_EPS2,
    *,
    scale_invariant: bool = False,
    tier: str = "vectorized",
) -> torch.Tensor:
    """Detail-preserving pooling of ``x`` (N, C, H, W) → (N, C, H_out, W_out).

    Args:
        alpha, lam: per-channel tensors of shape (C,) or scalars, all finite and ≥ 0.
        guide: ``None`` for Lite-DPP (box filter over the window) or ``(F, b)``
            with F (C, 1, 3, 3) and b (C,) for Full-DPP.
        eps2: ε² of the Charbonnier penalty, finite and > 0.
        scale_invariant: the authors' code variant (divide x²+ε² by its window mean).
        tier: which implementation runs the maths ("reference", "vectorized", ...).
    """
    kernel_size, stride, padding = check_geometry(kernel_size, stride, padding)
    check_input(x, None, kernel_size, stride, padding)
    alpha, lam = check_dpp_params(x, alpha, lam, guide, eps2)
    if guide is not None:
        check_full_guide(x.shape[-2], x.shape[-1], kernel_size, stride, padding)
    kernel = get_kernel(tier)
    return kernel(x, alpha, lam, guide, DPPArgs(kernel_size, stride, padding, bool(asym), float(eps2),
                                                bool(scale_invariant)))
