"""Detail-Preserving Pooling: the module, its variants and the tier contract.

The maths (Saeedan et al., CVPR 2018, eq. 4-10) is written once per tier as a *kernel*::

    kernel(x, alpha, lam, kernel_size, stride, padding, asym, guide, eps2, scale_invariant) -> y

with ``x`` (N, C, H, W), ``alpha`` and ``lam`` per-channel tensors (C,),
``guide`` None (Lite-DPP: box filter over the window) or ``(F, b)`` with F
(C, 1, 3, 3) and b (C,) (Full-DPP: ``conv2d(x, F, b, stride, padding=1,
groups=C)``).  Input is validated before a kernel sees it.

A tier file calls :func:`register_dpp_tier` once; that registers the four
variants (Lite/Full × Sym/Asym) and S3DPP for the tier, all sharing one module
class, so parameters, initialisation and validation are identical everywhere
and tiers differ only in execution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol

import torch
from torch import nn

from .base import Pool2d
from .macs import dpp_macs
from .registry import Availability, register
from .stochastic import Seeded, s3_sample
from .validation import pooled_size

__all__ = [
    "DPP_VARIANTS",
    "DPPKernel",
    "DetailPreservingPool2d",
    "S3DetailPreservingPool2d",
    "check_dpp_params",
    "check_full_guide",
    "dpid_filter",
    "get_kernel",
    "register_dpp_tier",
]

DEFAULT_EPS2 = 1e-3


class DPPKernel(Protocol):
    def __call__(
        self,
        x: torch.Tensor,
        alpha: torch.Tensor,
        lam: torch.Tensor,
        kernel_size: int,
        stride: int,
        padding: int,
        asym: bool,
        guide: tuple[torch.Tensor, torch.Tensor] | None,
        eps2: float,
        scale_invariant: bool,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class DPPVariant:
    name: str
    asym: bool
    full: bool
    stochastic: bool = False

    @property
    def params_per_channel(self) -> int:
        # α and λ, plus a 3×3 guide filter and its bias for Full-DPP.
        return 12 if self.full else 2


DPP_VARIANTS = (
    DPPVariant("dpp_lite_sym", asym=False, full=False),
    DPPVariant("dpp_lite_asym", asym=True, full=False),
    DPPVariant("dpp_full_sym", asym=False, full=True),
    DPPVariant("dpp_full_asym", asym=True, full=True),
    DPPVariant("s3dpp_lite_sym", asym=False, full=False, stochastic=True),
)

_KERNELS: dict[str, DPPKernel] = {}


def dpid_filter(channels: int, dtype=torch.float32) -> torch.Tensor:
    """DPID's linear downscaling filter [1,2,1]ᵀ[1,2,1]/16 (eq. 2), one per channel: (C, 1, 3, 3)."""
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=dtype)
    return (torch.outer(taps, taps) / 16).expand(channels, 1, 3, 3).clone()


def check_full_guide(height: int, width: int, kernel_size: int, stride: int, padding: int) -> None:
    """Full-DPP's 3×3 guide (padding 1, same stride) must land on the pooled grid."""
    pooled = (pooled_size(height, kernel_size, stride, padding), pooled_size(width, kernel_size, stride, padding))
    guided = (pooled_size(height, 3, stride, 1), pooled_size(width, 3, stride, 1))
    if pooled != guided:
        raise ValueError(
            f"Full-DPP's 3x3 guide gives a {guided[0]}x{guided[1]} map but pooling a {height}x{width} input with "
            f"kernel_size={kernel_size}, stride={stride}, padding={padding} gives {pooled[0]}x{pooled[1]}; "
            "use even sizes with k=2,s=2,pad=0 or k=3,s=2,pad=1"
        )


def check_dpp_params(x: torch.Tensor, alpha, lam, guide, eps2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate functional DPP parameters; scalars broadcast to per-channel tensors (C,)."""
    channels = x.shape[1]

    def per_channel(name: str, value) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a tensor or a number, got {type(value).__name__}")
            value = torch.tensor(float(value), device=x.device)
        if value.dim() == 0:
            value = value.expand(channels)
        if value.shape != (channels,):
            raise ValueError(f"{name} must be a scalar or have shape ({channels},) (one per channel), got {tuple(value.shape)}")
        if not value.dtype.is_floating_point:
            raise TypeError(f"{name} must be floating point, got {value.dtype}")
        if bool((value.detach() < 0).any()):
            raise ValueError(f"{name} must be >= 0, got min {value.detach().min().item():g}")
        return value.to(device=x.device)

    alpha, lam = per_channel("alpha", alpha), per_channel("lam", lam)
    if not isinstance(eps2, (int, float)) or isinstance(eps2, bool) or not eps2 > 0:
        raise ValueError(f"eps2 must be a positive number, got {eps2!r}")
    if guide is not None:
        if not (isinstance(guide, (tuple, list)) and len(guide) == 2):
            raise TypeError("guide must be None (Lite-DPP) or a pair (F, b) (Full-DPP)")
        weight, bias = guide
        if tuple(weight.shape) != (channels, 1, 3, 3) or tuple(bias.shape) != (channels,):
            raise ValueError(
                f"guide (F, b) must have shapes ({channels}, 1, 3, 3) and ({channels},), "
                f"got {tuple(weight.shape)} and {tuple(bias.shape)}"
            )
    return alpha, lam


def get_kernel(tier: str) -> DPPKernel:
    """The DPP kernel registered for ``tier`` (importing the plugins if needed)."""
    if tier not in _KERNELS:
        from .registry import load_plugins

        load_plugins()
    if tier not in _KERNELS:
        raise ValueError(f"no DPP kernel for tier {tier!r}; available: {', '.join(sorted(_KERNELS))}")
    return _KERNELS[tier]


class DetailPreservingPool2d(Pool2d):
    """DPP (eq. 4-10) with learned per-channel α, λ (stored as logs) and, for Full-DPP, a 3×3 guide.

    ``alpha`` and ``lam`` are the initial values (> 0, since they are stored as
    logs to stay positive while training, as in the authors' code); read the
    effective values from ``.alpha`` and ``.lam`` (shape (C,)).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 2,
        stride: int = 2,
        padding: int = 0,
        *,
        kernel: DPPKernel,
        asym: bool = False,
        full: bool = False,
        alpha: float = 1.0,
        lam: float = 1.0,
        eps2: float = DEFAULT_EPS2,
        scale_invariant: bool = False,
    ):
        super().__init__(channels, kernel_size, stride, padding)
        for name, value in (("alpha", alpha), ("lam", lam)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number > 0 for the module (it is learned as a log), got {value!r}")
        if isinstance(eps2, bool) or not isinstance(eps2, (int, float)) or not eps2 > 0:
            raise ValueError(f"eps2 must be a positive number, got {eps2!r}")
        self.kernel = kernel
        self.asym, self.full = bool(asym), bool(full)
        self.eps2, self.scale_invariant = float(eps2), bool(scale_invariant)
        self.log_alpha = nn.Parameter(torch.full((channels,), math.log(alpha)))
        self.log_lam = nn.Parameter(torch.full((channels,), math.log(lam)))
        if full:
            self.guide_weight = nn.Parameter(dpid_filter(channels))
            self.guide_bias = nn.Parameter(torch.zeros(channels))

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    @property
    def lam(self) -> torch.Tensor:
        return self.log_lam.exp()

    @property
    def guide(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return (self.guide_weight, self.guide_bias) if self.full else None

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.dpp(x, self.stride)

    def dpp(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        if self.full:
            check_full_guide(x.shape[-2], x.shape[-1], self.kernel_size, stride, self.padding)
        return self.kernel(
            x, self.alpha, self.lam, self.kernel_size, stride, self.padding,
            self.asym, self.guide, self.eps2, self.scale_invariant,
        )

    def extra_repr(self) -> str:
        kind = ("Full" if self.full else "Lite") + ("-Asym" if self.asym else "-Sym")
        return f"{super().extra_repr()}, variant={kind}, eps2={self.eps2:g}"


class S3DetailPreservingPool2d(Seeded, DetailPreservingPool2d):
    """S3DPP: DPP at stride 1, then S3Pool's stochastic row/column sampling at ``stride``.

    ``grid_size`` (default: ``stride``) is S3Pool's cell size; ``seed`` or
    ``generator`` make the sampling reproducible; eval mode samples every
    ``stride``-th row and column.
    """

    def __init__(self, channels, kernel_size=2, stride=2, padding=0, *, grid_size: int | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None, **options):
        super().__init__(channels, kernel_size, stride, padding, **options)
        self.grid_size = stride if grid_size is None else int(grid_size)
        if self.grid_size <= 0 or self.grid_size % stride:
            raise ValueError(f"grid_size must be a positive multiple of stride ({stride}), got {grid_size!r}")
        self.init_generator(seed, generator)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return s3_sample(self.dpp(x, 1), self.stride, self.grid_size, self.training, self.generator)


def register_dpp_tier(
    tier: str,
    kernel: DPPKernel,
    *,
    devices=("cpu", "cuda"),
    available: Availability | None = None,
    description: str = "",
    priority: int | Mapping[str, int] | None = None,
    op_namespaces: Iterable[str] = (),
) -> None:
    """Register ``kernel`` as the DPP kernel of ``tier``: all four variants and S3DPP.

    ``priority`` ranks the tier for ``create(tier=None)`` (see :func:`poolbench.registry.register`);
    ``op_namespaces`` name the custom-op namespaces its kernel runs (opaque to the FLOP counters).
    """
    _KERNELS[tier] = kernel
    for variant in DPP_VARIANTS:
        register(
            variant.name,
            tier,
            devices=devices,
            params=f"{variant.params_per_channel}·C",
            param_count=lambda channels, kernel_size, n=variant.params_per_channel: n * channels,
            macs=dpp_macs(variant.asym, variant.full, variant.stochastic),
            stochastic=variant.stochastic,
            priority=priority,
            op_namespaces=op_namespaces,
            family="dpp",
            description=description,
            available=available,
        )(_dpp_factory(variant, kernel))


def _dpp_factory(variant: DPPVariant, kernel: DPPKernel) -> Callable[..., nn.Module]:
    module_class = S3DetailPreservingPool2d if variant.stochastic else DetailPreservingPool2d

    def factory(channels, kernel_size=2, stride=2, padding=0, **options):
        return module_class(channels, kernel_size, stride, padding, kernel=kernel,
                            asym=variant.asym, full=variant.full, **options)

    factory.__name__ = f"{variant.name}_factory"
    return factory
