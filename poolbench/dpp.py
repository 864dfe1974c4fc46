"""Detail-Preserving Pooling: the module, its variants and the tier contract.

The maths (Saeedan et al., CVPR 2018, eq. 4-10) is written once per tier as a *kernel*::

    kernel(x, alpha, lam, guide, args: DPPArgs) -> y

with ``x`` (N, C, H, W), ``alpha`` and ``lam`` per-channel tensors (C,),
``guide`` None (Lite-DPP: box filter over the window) or ``(F, b)`` with F
(C, 1, 3, 3) and b (C,) (Full-DPP: ``conv2d(x, F, b, stride, padding=1,
groups=C)``), and :class:`DPPArgs` the non-tensor settings (window, variant,
ε²).  Input is validated before a kernel sees it.

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
import torch.nn.functional as F
from torch import nn

from . import models
from .base import Pool2d
from .macs import dpp_macs
from .registry import Availability, load_plugins, register
from .stochastic import Seeded, s3_sample
from .validation import pooled_size

__all__ = [
    "AUTHORS_EPS",
    "DPP_VARIANTS",
    "AverageDownSample",
    "DPPArgs",
    "DPPKernel",
    "DetailPreservingPool2d",
    "S3DetailPreservingPool2d",
    "check_dpp_params",
    "check_eps2",
    "build_authors_resnet",
    "check_full_guide",
    "dpid_filter",
    "get_kernel",
    "register_dpp_tier",
]

DEFAULT_EPS2 = 1e-3


@dataclass(frozen=True)
class DPPArgs:
    """The non-tensor settings of one DPP call, passed to every tier's kernel as one value.

    Frozen (hashable) so it is a constant for ``torch.compile`` and can key
    caches; the front end builds it from already validated values.
    """

    kernel_size: int
    stride: int
    padding: int
    asym: bool = False
    eps2: float = DEFAULT_EPS2
    #: The authors' code variant: x² + ε² divided by its window mean before raising it to λ/2.
    scale_invariant: bool = False
    #: ``alpha``/``lam`` hold ln α, ln λ (the module's stored parameters), for a kernel that
    #: declared ``takes_log_params`` (see :func:`register_dpp_tier`); never part of the op settings.
    log_params: bool = False

    def op_arguments(self) -> tuple[int, int, int, bool, float, bool]:
        """The settings in the order of the fused ops' schema (after the tensors; ``log_params`` apart)."""
        return (int(self.kernel_size), int(self.stride), int(self.padding), bool(self.asym), float(self.eps2),
                bool(self.scale_invariant))

    def pooled_shape(self, shape) -> tuple[int, int, int, int]:
        """Output shape (N, C, H_out, W_out) for an input of ``shape`` (N, C, H, W)."""
        n, c, h, w = shape
        k, s, p = self.kernel_size, self.stride, self.padding
        return n, c, pooled_size(h, k, s, p), pooled_size(w, k, s, p)


class DPPKernel(Protocol):
    def __call__(
        self,
        x: torch.Tensor,
        alpha: torch.Tensor,
        lam: torch.Tensor,
        guide: tuple[torch.Tensor, torch.Tensor] | None,
        args: DPPArgs,
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


def check_eps2(eps2) -> float:
    """ε² must be a finite positive number: 0 makes flat windows 0/0, inf or NaN makes every weight inf/NaN."""
    if isinstance(eps2, bool) or not isinstance(eps2, (int, float)) or not (math.isfinite(eps2) and eps2 > 0):
        raise ValueError(f"eps2 must be a finite positive number, got {eps2!r}")
    return float(eps2)


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
        # One reduction (one device sync) answers both questions; NaN fails `>= 0` as well.
        values = value.detach()
        valid = torch.isfinite(values) & (values >= 0)
        if not bool(valid.all()):
            bad = values[~valid][0].item()
            raise ValueError(f"{name} must be finite and >= 0 (one per channel), got {bad}")
        return value.to(device=x.device)

    alpha, lam = per_channel("alpha", alpha), per_channel("lam", lam)
    check_eps2(eps2)
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
        load_plugins()
    if tier not in _KERNELS:
        raise ValueError(f"no DPP kernel for tier {tier!r}; available: {', '.join(sorted(_KERNELS))}")
    return _KERNELS[tier]


class DetailPreservingPool2d(Pool2d):
    """DPP (eq. 4-10) with learned per-channel α, λ (stored as logs) and, for Full-DPP, a 3×3 guide.

    ``alpha`` and ``lam`` are the initial values (> 0, since they are stored as
    logs to stay positive while training, as in the authors' code); read the
    effective values from ``.alpha`` and ``.lam`` (shape (C,)).

    ``init`` picks the initialisation:

    * ``"default"``: θα = log α, θλ = log λ for every channel (α = λ = 1 unless
      given) and Full-DPP's guide = DPID's filter [1,2,1]ᵀ[1,2,1]/16 (eq. 2),
      b = 0 — a deterministic start that equals DPP as the paper writes it;
    * ``"authors"``: as visinf/dpp trains it — θα, θλ ~ U(−1/√C, 1/√C)
      (``PositiveBias.lua`` and ``CWeightCalc.lua``, ``reset()``), and the
      guide re-drawn from N(0, √(2/9)) by ``ConvInit`` in
      ``models/resnetdpp.lua`` (n = 3·3·1 outputs), which also removes its
      bias; here b stays a parameter, initialised to 0.  Uses torch's global
      generator, like ``nn.Conv2d``'s initialisation.
    """

    INITS = ("default", "authors")

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
        init: str = "default",
    ):
        super().__init__(channels, kernel_size, stride, padding)
        if init not in self.INITS:
            raise ValueError(f"init must be one of {', '.join(self.INITS)}, got {init!r}")
        if init == "authors" and (alpha, lam) != (1.0, 1.0):
            raise ValueError("init='authors' draws α and λ at random; do not pass alpha or lam with it")
        for name, value in (("alpha", alpha), ("lam", lam)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number > 0 for the module (it is learned as a log), got {value!r}")
        self.kernel = kernel
        #: the kernel takes the stored logs (one op per call) instead of α = exp(θα), λ = exp(θλ)
        self.kernel_takes_logs = bool(getattr(kernel, "takes_log_params", False))
        self.asym, self.full = bool(asym), bool(full)
        self.eps2, self.scale_invariant = check_eps2(eps2), bool(scale_invariant)
        self.log_alpha = nn.Parameter(torch.full((channels,), math.log(alpha)))
        self.log_lam = nn.Parameter(torch.full((channels,), math.log(lam)))
        if full:
            self.guide_weight = nn.Parameter(dpid_filter(channels))
            self.guide_bias = nn.Parameter(torch.zeros(channels))
        if init == "authors":
            self._init_as_authors()

    def _init_as_authors(self) -> None:
        bound = 1.0 / math.sqrt(self.channels)
        with torch.no_grad():
            self.log_alpha.uniform_(-bound, bound)
            self.log_lam.uniform_(-bound, bound)
            if self.full:
                self.guide_weight.normal_(0.0, math.sqrt(2.0 / 9.0))
                self.guide_bias.zero_()

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    @property
    def lam(self) -> torch.Tensor:
        return self.log_lam.exp()

    @property
    def guide(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return (self.guide_weight, self.guide_bias) if self.full else None

    #: How many (shape, dtype, device, settings) keys a module remembers as validated.
    VALIDATED_KEYS = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Validate ``x`` (N, C, H, W) once per (shape, dtype, device, settings), then pool.

        The first call with a key runs every check of :meth:`Pool2d.forward` (input, Full-DPP's
        guide, output shape) and remembers the key with the call to make for it; later calls
        with that key go straight to the kernel (for a kernel with a ``bind`` method, such as
        the fused cpp/cuda tiers, straight to the op).  A new shape, dtype, device or setting
        is validated again; a failed check is never remembered.  Under ``torch.compile`` every
        trace validates.
        """
        if isinstance(x, torch.Tensor) and not torch.compiler.is_compiling():
            key = (x.shape, x.dtype, x.device, self.kernel_size, self.stride, self.padding, self.asym, self.eps2,
                   self.scale_invariant, self.training)
            validated = self.__dict__.get("_validated")
            if validated is not None:
                run = validated.get(key)
                if run is not None:
                    return run(x)
            else:
                validated = self.__dict__["_validated"] = {}
            y = super().forward(x)
            if len(validated) >= self.VALIDATED_KEYS:
                validated.clear()
            validated[key] = self._fast_path(x)
            return y
        return super().forward(x)

    def _fast_path(self, x: torch.Tensor):
        """What a validated call runs: the bound op with the stored parameters, or :meth:`pool`."""
        bind = getattr(self.kernel, "bind", None)
        if bind is None or not self.kernel_takes_logs or type(self).pool is not DetailPreservingPool2d.pool:
            return self.pool
        run = bind(x, self._args(self.stride))
        params = self._parameters
        if self.full:
            return lambda x: run(x, params["log_alpha"], params["log_lam"], (params["guide_weight"],
                                                                             params["guide_bias"]))
        return lambda x: run(x, params["log_alpha"], params["log_lam"], None)

    def __getstate__(self):
        # The caches hold closures over this module: a copy or a pickle rebuilds its own.
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state.pop("_validated", None)
        state.pop("_args_cache", None)
        return state

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.dpp(x, self.stride)

    def _args(self, stride: int) -> DPPArgs:
        """The call's settings (cached: a frozen DPPArgs per setting tuple, built once)."""
        key = (self.kernel_size, stride, self.padding, self.asym, self.eps2, self.scale_invariant,
               self.kernel_takes_logs)
        if torch.compiler.is_compiling():  # a constant of the trace; no cache (older Dynamo cannot trace it)
            return DPPArgs(*key)
        cache = self.__dict__.get("_args_cache")
        if cache is None:
            cache = self.__dict__["_args_cache"] = {}
        args = cache.get(key)
        if args is None:
            args = cache[key] = DPPArgs(*key)
        return args

    def dpp(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        if self.full:
            check_full_guide(x.shape[-2], x.shape[-1], self.kernel_size, stride, self.padding)
        args = self._args(stride)
        if self.kernel_takes_logs:
            return self.kernel(x, self.log_alpha, self.log_lam, self.guide, args)
        return self.kernel(x, self.alpha, self.lam, self.guide, args)

    def extra_repr(self) -> str:
        kind = ("Full" if self.full else "Lite") + ("-Asym" if self.asym else "-Sym")
        return f"{super().extra_repr()}, variant={kind}, eps2={self.eps2:g}"


class S3DetailPreservingPool2d(Seeded, DetailPreservingPool2d):
    """S3DPP as the authors build it: DPP at stride 1, then S3Pool (2×2 average pooling in eval).

    visinf/dpp, visinf_package/S3_DPP_sym_lite.lua: four stride-2 DPP layers
    sharing α and λ run on the input shifted by one row and/or column, the
    vacated bottom row / right column filled by ``SpatialReplicationPadding``;
    ``merger.lua`` interleaves them into the stride-1 DPP map of the input
    replicate-padded by one row and column at the bottom/right, so the dense
    map has the input's size.  ``s3pool.lua`` then samples it in training and
    average-pools it (2×2, stride 2) in evaluation.  For any window this is:
    replicate-pad bottom/right by s − 1, DPP with (k, stride 1, p), keep the
    first out·s rows and columns (out = the standard pooled size; all of them
    for the authors' k = s = 2 on even sizes), then

    * eval: ``avg_pool2d(dense, s, s)``;
    * train: S3 sampling of the dense map.  ``grid_size=None`` is the
      authors' choice: ``s3pool.lua`` overrides its grid with half the map
      (``self.grid = input:size(3) / 2``), i.e. two cells per axis, each
      keeping a random, sorted 1/s of its rows; an int keeps
      S3Pool's fixed g×g cells.

    ``seed`` or ``generator`` make the sampling reproducible.
    """

    def __init__(self, channels, kernel_size=2, stride=2, padding=0, *, grid_size: int | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None, **options):
        super().__init__(channels, kernel_size, stride, padding, **options)
        if grid_size is not None and (isinstance(grid_size, bool) or not isinstance(grid_size, int)
                                      or grid_size <= 0 or grid_size % stride):
            raise ValueError(f"grid_size must be None (the authors' two cells per axis) or a positive multiple of "
                             f"stride ({stride}), got {grid_size!r}")
        self.grid_size = grid_size
        self.init_generator(seed, generator)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-1 DPP map of ``x`` replicate-padded at the bottom/right, cropped to out·s rows/columns."""
        s = self.stride
        out_h, out_w = self.output_size(*x.shape[-2:])
        padded = F.pad(x, (0, s - 1, 0, s - 1), mode="replicate") if s > 1 else x
        return self.dpp(padded, 1)[..., : out_h * s, : out_w * s]

    def authors_grid(self, out_h: int, out_w: int) -> tuple[int, int]:
        """Two cells per axis: the first of s·ceil(out/2) rows (half the map when out is even)."""
        return self.stride * -(-out_h // 2), self.stride * -(-out_w // 2)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        dense = self.dense(x)
        if not self.training:
            return F.avg_pool2d(dense, self.stride, self.stride)
        out_h, out_w = dense.shape[-2] // self.stride, dense.shape[-1] // self.stride
        grid = self.authors_grid(out_h, out_w) if self.grid_size is None else self.grid_size
        return s3_sample(dense, self.stride, grid, True, self.generator)


def register_dpp_tier(
    tier: str,
    kernel: DPPKernel,
    *,
    devices=("cpu", "cuda"),
    available: Availability | None = None,
    description: str = "",
    priority: int | Mapping[str, int] | None = None,
    op_namespaces: Iterable[str] = (),
    takes_log_params: bool = False,
) -> None:
    """Register ``kernel`` as the DPP kernel of ``tier``: all four variants and S3DPP.

    ``priority`` ranks the tier for ``create(tier=None)`` (see :func:`poolbench.registry.register`);
    ``op_namespaces`` name the custom-op namespaces its kernel runs (opaque to the FLOP counters).
    ``takes_log_params``: the kernel honours ``DPPArgs.log_params``, so the modules hand it their
    stored θα = ln α, θλ = ln λ and it returns gradients w.r.t. them (no ``exp`` per call);
    other kernels always get α and λ (``args.log_params`` False).
    """
    if takes_log_params:
        kernel.takes_log_params = True
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


# ----------------------------------------------------------------------------------------------
# the authors' own ResNet pooling layer (visinf/dpp), a fixed-guide Full-DPP
# ----------------------------------------------------------------------------------------------

#: The authors' CUDA kernel's ε (``float epsilon = 0.001f``), added to the squared difference.
AUTHORS_EPS = 1e-3


class AverageDownSample(Pool2d):
    """The authors' ResNet-50/101 pooling layer (visinf/dpp ``models/cudads.lua``, ``AverageDownSample``).

    w_q = ((d_q² + ε) / Σ_window (d² + ε))^(λ/2) + α,  d = I − Ĩ,  Ĩ = avg_pool2d(I, 3, 2, 1) (padding
    counted), y = Σ w·I / Σ w over each 2×2 window at stride 2, α = e^θα, λ = e^θλ learned per channel.
    Computed by the DPP kernels of ``tier`` as a Full-DPP with the fixed guide F = 1/9, b = 0,
    ``scale_invariant=True`` and α′ = α·4^(λ/2): the window-sum normalisation of the authors' CUDA kernel
    is the window-mean form (the Lua layers') with α scaled, since (y/Σy)^(λ/2) = 4^(−λ/2)·(y/mean y)^(λ/2)
    and the weights are normalised (see :mod:`poolbench.models.authors`).
    """

    def __init__(self, channels: int, kernel_size: int = 2, stride: int = 2, padding: int = 0, *,
                 tier: str = "vectorized"):
        super().__init__(channels, kernel_size, stride, padding)
        if (self.kernel_size, self.stride, self.padding) != (2, 2, 0):
            raise ValueError("AverageDownSample pools 2x2 windows at stride 2 without padding (the authors' CUDA "
                             f"kernel's only geometry), got kernel_size={kernel_size}, stride={stride}, "
                             f"padding={padding}")
        self.tier = tier
        self.log_alpha = nn.Parameter(torch.zeros(channels))
        self.log_lam = nn.Parameter(torch.zeros(channels))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        check_full_guide(x.shape[-2], x.shape[-1], 2, 2, 0)
        lam = self.log_lam.exp()
        alpha = self.log_alpha.exp() * torch.pow(4.0, lam / 2)
        weight = x.new_full((self.channels, 1, 3, 3), 1.0 / 9.0)
        args = DPPArgs(2, 2, 0, asym=False, eps2=AUTHORS_EPS, scale_invariant=True)
        return get_kernel(self.tier)(x, alpha, lam, (weight, x.new_zeros(self.channels)), args)


def build_authors_resnet(model_name: str, tier: str = "vectorized") -> nn.Module:
    """The authors' own ResNet-50/101: :class:`AverageDownSample` at the authors' sites (random weights)."""
    base, _ = models.split_placement(model_name)
    if base not in ("resnet50", "resnet101"):
        raise ValueError(f"the authors' AverageDownSample network is a bottleneck ResNet (resnet50, resnet101), "
                         f"got {model_name!r}")
    return models.build_with(models.placed_name(base, "authors"), lambda site: AverageDownSample(site.channels,
                                                                                                   tier=tier))
