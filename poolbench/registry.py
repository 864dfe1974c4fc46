"""The plugin registry: every pooler, once per execution tier.

Why a registry: the harness, the checks and the CLI must treat the four DPP
variants, S3DPP and every baseline alike, and third parties must be able to
add a pooler without touching poolbench.  A pooler is registered once per
*tier* (reference, vectorized, compiled, cpp, cuda, triton) with a factory that
builds an ``nn.Module``; everything else (which tiers exist, which is fastest on
a device, how many parameters it adds) is read from the registry.

Poolers come from two places:

* the in-tree plugin package ``impls`` (every module in it is imported), and
* the entry-point group ``poolbench.impls`` of installed distributions: an
  entry point names a module (or an object) whose import runs ``@register``.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

__all__ = [
    "ENTRY_POINT_GROUP",
    "TIERS",
    "PoolerSpec",
    "create",
    "get_spec",
    "load_plugins",
    "names",
    "register",
    "specs",
    "tiers",
    "unavailable_reason",
]

ENTRY_POINT_GROUP = "poolbench.impls"

#: Every tier a pooler may be registered under, in a stable display order.
TIERS = ("reference", "vectorized", "compiled", "cpp", "cuda", "triton")

#: Which tier ``create(tier=None)`` picks, by device, first available wins.
#: On CPU the C++ kernel comes first only if it is already built or buildable
#: (its ``available`` hook decides); ``compiled`` ranks below ``vectorized``
#: there because its first call pays seconds of compilation.
TIER_PREFERENCE = {
    "cuda": ("cuda", "triton", "compiled", "vectorized", "reference"),
    "cpu": ("cpp", "vectorized", "compiled", "reference"),
}

log = logging.getLogger(__name__)

ParamCount = Callable[[int, int], int]
Availability = Callable[[str], "str | None"]


def _always_available(device: str) -> str | None:
    return None


@dataclass(frozen=True)
class PoolerSpec:
    """What the registry knows about one (pooler, tier) pair.

    ``param_count(channels, kernel_size)`` gives the exact number of learned
    parameters the pooler adds, so parameter overheads can be checked
    analytically; ``params`` is the same formula for humans ("2·C").
    ``available(device)`` returns ``None`` when the tier can run on that device
    type, else the reason it cannot (missing CUDA, missing compiler, ...).
    """

    name: str
    tier: str
    factory: Callable[..., nn.Module]
    devices: tuple[str, ...] = ("cpu", "cuda")
    params: str = "0"
    param_count: ParamCount = field(default=lambda channels, kernel_size: 0)
    differentiable: bool = True
    stochastic: bool = False
    family: str = "baseline"
    description: str = ""
    available: Availability = _always_available
    source: str = ""

    def unavailable_reason(self, device: str | torch.device) -> str | None:
        """Why this tier cannot run on ``device`` (``None`` if it can)."""
        device_type = torch.device(device).type
        if device_type not in self.devices:
            return f"{self.name}[{self.tier}] does not support device {device_type!r} (supports {', '.join(self.devices)})"
        if device_type == "cuda" and not torch.cuda.is_available():
            return "CUDA is not available on this machine (torch.cuda.is_available() is False)"
        return self.available(device_type)


_REGISTRY: dict[str, dict[str, PoolerSpec]] = {}
_PLUGINS_LOADED = False
_PLUGIN_ERRORS: dict[str, str] = {}


def register(
    name: str,
    tier: str = "vectorized",
    *,
    devices: Iterable[str] = ("cpu", "cuda"),
    params: str = "0",
    param_count: ParamCount | None = None,
    differentiable: bool = True,
    stochastic: bool = False,
    family: str = "baseline",
    description: str = "",
    available: Availability | None = None,
    replace: bool = False,
):
    """Decorator registering ``factory(channels, kernel_size, stride, padding, **options)``.

    Registering the same (name, tier) twice is an error unless ``replace=True``
    (so two plugins cannot silently shadow each other).
    """
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"pooler name must be a non-empty identifier, got {name!r}")

    def decorator(factory: Callable[..., nn.Module]):
        existing = _REGISTRY.get(name, {}).get(tier)
        if existing is not None and not replace and existing.factory is not factory:
            raise ValueError(
                f"pooler {name!r} already has a {tier!r} tier (from {existing.source}); pass replace=True to override"
            )
        spec = PoolerSpec(
            name=name,
            tier=tier,
            factory=factory,
            devices=tuple(devices),
            params=params,
            param_count=param_count or (lambda channels, kernel_size: 0),
            differentiable=differentiable,
            stochastic=stochastic,
            family=family,
            description=description or _first_line(factory.__doc__),
            available=available or _always_available,
            source=getattr(factory, "__module__", "?"),
        )
        _REGISTRY.setdefault(name, {})[tier] = spec
        return factory

    return decorator


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def load_plugins(force: bool = False) -> dict[str, str]:
    """Import the in-tree ``impls`` package and every ``poolbench.impls`` entry point.

    A plugin that fails to import is recorded (see the returned mapping of
    plugin -> error) instead of breaking every other pooler.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED and not force:
        return dict(_PLUGIN_ERRORS)
    _PLUGINS_LOADED = True
    import impls  # the in-tree plugin package

    for module in pkgutil.iter_modules(impls.__path__, prefix="impls."):
        _import_plugin(module.name, lambda n=module.name: importlib.import_module(n))
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        _import_plugin(f"{entry_point.name} ({entry_point.value})", entry_point.load)
    return dict(_PLUGIN_ERRORS)


def _import_plugin(label: str, loader: Callable[[], object]) -> None:
    try:
        loader()
    except Exception as exc:  # a broken plugin must not hide the others
        _PLUGIN_ERRORS[label] = f"{type(exc).__name__}: {exc}"
        log.warning("poolbench plugin %s failed to load: %s", label, exc)


def names() -> list[str]:
    """All registered pooler names, sorted."""
    load_plugins()
    return sorted(_REGISTRY)


def tiers(name: str) -> list[str]:
    """The tiers registered for ``name``, in :data:`TIERS` order."""
    return [tier for tier in TIERS if tier in _tiers_of(name)]


def _tiers_of(name: str) -> dict[str, PoolerSpec]:
    load_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown pooler {name!r}; known poolers: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def specs() -> list[PoolerSpec]:
    """Every registered (pooler, tier), sorted by name then tier order."""
    load_plugins()
    return [spec for name in sorted(_REGISTRY) for tier in TIERS if (spec := _REGISTRY[name].get(tier))]


def get_spec(name: str, tier: str | None = None, device: str | torch.device = "cpu") -> PoolerSpec:
    """The spec for ``name`` at ``tier``; ``tier=None`` picks the fastest available on ``device``."""
    registered = _tiers_of(name)
    if tier is not None:
        if tier not in registered:
            raise ValueError(f"pooler {name!r} has no {tier!r} tier; it has: {', '.join(tiers(name))}")
        return registered[tier]
    device_type = torch.device(device).type
    preference = TIER_PREFERENCE.get(device_type, TIERS)
    reasons = []
    for candidate in preference:
        spec = registered.get(candidate)
        if spec is None:
            continue
        reason = spec.unavailable_reason(device_type)
        if reason is None:
            return spec
        reasons.append(f"{candidate}: {reason}")
    raise ValueError(f"no tier of {name!r} can run on {device_type!r}: {'; '.join(reasons) or 'none registered'}")


def unavailable_reason(name: str, tier: str, device: str | torch.device) -> str | None:
    """Why ``name[tier]`` cannot run on ``device``, or ``None`` if it can."""
    return get_spec(name, tier).unavailable_reason(device)


def create(
    name: str,
    channels: int,
    kernel_size: int = 2,
    stride: int = 2,
    padding: int = 0,
    tier: str | None = None,
    *,
    device: str | torch.device | None = None,
    **options,
) -> nn.Module:
    """Build pooler ``name`` for ``channels`` feature maps.

    ``tier=None`` chooses the fastest tier available on ``device`` (default
    CPU).  The module is moved to ``device`` when one is given.  Raises
    ``ValueError`` if the tier cannot run there, with the reason.
    """
    spec = get_spec(name, tier, device or "cpu")
    # without a device the module is built on the CPU; a tier that runs only elsewhere (cuda, triton) must
    # still be runnable on this machine, or the first forward would be the first to say so
    target = device if device is not None else ("cpu" if "cpu" in spec.devices else spec.devices[0])
    reason = spec.unavailable_reason(target)
    if reason is not None:
        raise ValueError(f"{name}[{spec.tier}] cannot run on {torch.device(target).type}: {reason}")
    module = spec.factory(channels, kernel_size, stride, padding, **options)
    module.pooler_name = name
    module.tier = spec.tier
    if device is not None:
        module = module.to(device)
    return module
