"""The plugin registry: every pooler, once per execution tier.

Why a registry: the harness, the checks and the CLI must treat the four DPP
variants, S3DPP and every baseline alike, and third parties must be able to
add a pooler without touching poolbench.  A pooler is registered once per
*tier* (reference, vectorized, compiled, cpp, cuda, triton, or a plugin's own
tier name) with a factory that builds an ``nn.Module`` and the rest of its
contract (parameter and MAC formulas, flags, the tier's priority); everything
else (which tiers exist, which is fastest on a device, how many parameters and
MACs it adds, which tests it gets) is read from the registry.

Poolers come from two places:

* the in-tree plugin package ``poolbench.impls`` (the repository's ``impls/`` folder; every module in it is imported), and
* the entry-point group ``poolbench.impls`` of installed distributions: an
  entry point names a module (or an object) whose import runs ``@register``.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import torch
from torch import nn

from .base import Pool2d, check_output_shape

if TYPE_CHECKING:
    from .macs import PoolGeometry

__all__ = [
    "ENTRY_POINT_GROUP",
    "GradientRule",
    "TIERS",
    "PoolerNetwork",
    "PoolerSpec",
    "by_priority",
    "check_tier_names",
    "create",
    "get_spec",
    "known_tiers",
    "load_plugins",
    "names",
    "networks",
    "register",
    "register_network",
    "specs",
    "tiers",
    "tiers_on",
    "left_out_reason",
    "LEFT_OUT_BY_DEFAULT",
    "unavailable_reason",
]

ENTRY_POINT_GROUP = "poolbench.impls"
#: poolbench's own metrics, loaded first and like any plugin (so they come first in the report's columns).
BUILTIN_PLUGINS = ("poolbench.measure.builtin_metrics",)
#: The in-tree plugin package: every module in it is imported.
IN_TREE_PLUGINS = "poolbench.impls"

#: The tiers poolbench ships, in display order.  Tiers are open names: a plugin that
#: registers under a new tier name appends it to :func:`known_tiers`.
TIERS = ("reference", "vectorized", "compiled", "cpp", "cuda", "triton")
_TIER_ORDER: list[str] = list(TIERS)

#: The priority of a reference tier: picked by ``create(tier=None)`` only when nothing else runs.
REFERENCE_PRIORITY = -10

log = logging.getLogger(__name__)

ParamCount = Callable[[int, int], int]
Availability = Callable[[str], "str | None"]
#: ``macs(geometry, options) -> int``: multiply-accumulates of one call (see :mod:`poolbench.macs`).
MacsFormula = Callable[["PoolGeometry", Mapping[str, object]], int]
#: A tier's rank when ``create(tier=None)`` chooses: one number for every device, or per device type
#: (a device type left out never picks the tier automatically).  Higher wins.
Priority = "int | Mapping[str, int]"


def _always_available(device: str) -> str | None:
    return None


@dataclass(frozen=True)
class GradientRule:
    """How the equivalence contract judges a pooler's gradients against its float64 reference.

    ``input``: ``"element"`` (every element of the input gradient within the
    tolerance) or ``"plane"`` (norm-wise per (n, c) plane, as parameter gradients
    are judged).  ``tolerance_scale`` widens the gradient tolerances (never the
    output's).  A pooler declares a looser rule, with its reason in ``why``
    (shown beside a failure), when float32 cannot do better at full size:
    LIP's logit trunk normalises whole planes and gates them through ReLUs, and
    a float32 forward that lands on the other side of one ReLU kink moves a few
    input-gradient elements by O(1) relative and a per-channel parameter
    gradient by ~10⁻³ of its norm.  A looser rule still fails a wrong formula,
    which moves every window (or a whole border row or column) by O(1), but it can
    miss a single wrong element of a large plane: declare only what the pooler needs.
    """

    input: str = "element"
    tolerance_scale: float = 1.0
    why: str = ""

    def __post_init__(self):
        if self.input not in ("element", "plane"):
            raise ValueError(f"GradientRule.input must be 'element' or 'plane', got {self.input!r}")
        if isinstance(self.tolerance_scale, bool) or not isinstance(self.tolerance_scale, (int, float)) \
                or not 1 <= self.tolerance_scale <= 100:
            raise ValueError(f"GradientRule.tolerance_scale must be a number in [1, 100], got {self.tolerance_scale!r}")


@dataclass(frozen=True)
class PoolerSpec:
    """What the registry knows about one (pooler, tier) pair: the whole pooler contract.

    ``param_count(channels, kernel_size)`` gives the exact number of learned
    parameters the pooler adds, so parameter overheads can be checked
    analytically; ``params`` is the same formula for humans ("2·C").
    ``macs(geometry, options)`` is the pooler's arithmetic written from its
    definition (``None``: it declares none, and only its module's ops are
    counted — a fused kernel without a formula cannot be priced).
    ``available(device)`` returns ``None`` when the tier can run on that device
    type, else the reason it cannot (missing CUDA, missing compiler, ...).
    ``priority`` ranks the tier for ``create(tier=None)`` per device type;
    ``op_namespaces`` name the ``torch.library`` namespaces of custom ops the
    tier runs, which FLOP counters cannot see into.
    ``gradient_rule`` is how the equivalence contract judges its gradients
    (:class:`GradientRule`; the default suits a pooler whose outputs depend on
    their window alone).
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
    macs: MacsFormula | None = None
    priority: Mapping[str, int] = field(default_factory=dict)
    op_namespaces: tuple[str, ...] = ()
    gradient_rule: GradientRule = field(default_factory=lambda: GradientRule())

    @property
    def learnable(self) -> bool:
        """Whether the pooler adds learned parameters (its formula is non-zero)."""
        return self.param_count(8, 3) > 0

    def unavailable_reason(self, device: str | torch.device) -> str | None:
        """Why this tier cannot run on ``device`` (``None`` if it can)."""
        device_type = torch.device(device).type
        if device_type not in self.devices:
            return f"{self.name}[{self.tier}] does not support device {device_type!r} (supports {', '.join(self.devices)})"
        if device_type == "cuda" and not torch.cuda.is_available():
            return "CUDA is not available on this machine (torch.cuda.is_available() is False)"
        return self.available(device_type)


#: ``swap(model, make) -> sites``: turns an unmodified network into a pooler's own, in place, placing
#: ``make(site)`` (the pooler, built by the run's tier and options) at each of its sites (see ``poolbench.models``).
NetworkSwap = Callable[[nn.Module, Callable[..., nn.Module]], list]


@dataclass(frozen=True)
class PoolerNetwork:
    """A network a pooler brings itself: the one its authors built, or its own form of the paper's sites.

    It is declared for a network name that may carry a placement (``"resnet50@authors"``: the authors'
    network; a bare ``"resnet50"``: the paper's same-sites comparison in the pooler's own form, e.g. LIP's
    logit trunk shared by a block's two sites).  ``swap`` builds it from the unmodified network
    (``None``: it *is* the pooler's network at the paper's placement, so nothing is measured twice);
    ``source`` names where it comes from (repository file or paper table); ``param_overhead(sites)``
    is its analytic parameter overhead when that is not the sum of the pooler's per-site formula
    (shared modules, changed convolutions); ``note`` says what differs from the authors' own code.
    """

    swap: NetworkSwap | None
    source: str
    param_overhead: Callable[[list], int] | None = None
    note: str = ""


_REGISTRY: dict[str, dict[str, PoolerSpec]] = {}
_NETWORKS: dict[str, dict[str, PoolerNetwork]] = {}
_PLUGINS_LOADED = False
_PLUGIN_ERRORS: dict[str, str] = {}


def register(
    name: str,
    tier: str = "vectorized",
    *,
    devices: Iterable[str] = ("cpu", "cuda"),
    params: str = "0",
    param_count: ParamCount | None = None,
    macs: MacsFormula | None = None,
    differentiable: bool = True,
    stochastic: bool = False,
    family: str = "baseline",
    priority: int | Mapping[str, int] | None = None,
    op_namespaces: Iterable[str] = (),
    description: str = "",
    available: Availability | None = None,
    replace: bool = False,
    networks: Mapping[str, PoolerNetwork] | None = None,
    gradient_rule: GradientRule | None = None,
):
    """Decorator registering ``factory(channels, kernel_size, stride, padding, **options)``.

    ``gradient_rule`` is how its gradients are judged against the reference (:class:`GradientRule`).
    ``networks`` declares the networks the pooler brings itself (see :class:`PoolerNetwork` and
    :func:`register_network`): the pooler, not poolbench, says where its authors put it.

    A new tier name is accepted (an identifier) and joins :func:`known_tiers`.
    ``priority`` defaults to 0 on every device (:data:`REFERENCE_PRIORITY` for
    the ``reference`` tier).  Registering the same (name, tier) twice is an
    error unless ``replace=True`` (so two plugins cannot silently shadow each other).
    """
    for label, value in (("pooler name", name), ("tier name", tier)):
        if not isinstance(value, str) or not value or not value.replace("_", "").isalnum():
            raise ValueError(f"{label} must be a non-empty identifier, got {value!r}")
    if gradient_rule is not None and not isinstance(gradient_rule, GradientRule):
        raise TypeError(f"gradient_rule must be a poolbench.registry.GradientRule, got {gradient_rule!r}")
    devices = tuple(devices)
    ranks = _priority_by_device(tier, priority, devices)

    def decorator(factory: Callable[..., nn.Module]):
        existing = _REGISTRY.get(name, {}).get(tier)
        if existing is not None and not replace and existing.factory is not factory:
            raise ValueError(
                f"pooler {name!r} already has a {tier!r} tier (from {existing.source}); pass replace=True to override"
            )
        spec = PoolerSpec(
            name=name, tier=tier, factory=factory, devices=devices, params=params,
            param_count=param_count or (lambda channels, kernel_size: 0), macs=macs,
            differentiable=differentiable, stochastic=stochastic, family=family, priority=ranks,
            op_namespaces=tuple(op_namespaces), description=description or _first_line(factory.__doc__),
            available=available or _always_available, source=getattr(factory, "__module__", "?"),
            gradient_rule=gradient_rule or GradientRule(),
        )
        if tier not in _TIER_ORDER:
            _TIER_ORDER.append(tier)
        _REGISTRY.setdefault(name, {})[tier] = spec
        for network, declaration in (networks or {}).items():
            register_network(name, network, declaration, replace=replace)
        return factory

    return decorator


def register_network(pooler: str, network: str, declaration: PoolerNetwork, *, replace: bool = False) -> None:
    """Declare ``declaration`` as ``pooler``'s own ``network`` (``"resnet50@authors"``, or a bare name).

    Every tier of the pooler shares it.  Declaring a different one for the same (pooler, network)
    is an error unless ``replace=True``.
    """
    if not isinstance(declaration, PoolerNetwork):
        raise TypeError(f"a pooler's network must be a poolbench.registry.PoolerNetwork, got {declaration!r}")
    if not isinstance(network, str) or not network.replace("@", "").replace("_", "").isalnum():
        raise ValueError(f"network must be a model name, optionally with its placement ('resnet50@authors'), "
                         f"got {network!r}")
    existing = _NETWORKS.get(pooler, {}).get(network)
    if existing is not None and existing != declaration and not replace:
        raise ValueError(f"pooler {pooler!r} already declares its {network!r} network (from {existing.source}); "
                         "pass replace=True to override")
    _NETWORKS.setdefault(pooler, {})[network] = declaration


def networks(pooler: str) -> dict[str, PoolerNetwork]:
    """The networks ``pooler`` declares, by (placed) network name (empty: it brings none)."""
    load_plugins()
    return dict(_NETWORKS.get(pooler, {}))


def _priority_by_device(tier: str, priority, devices: tuple[str, ...]) -> dict[str, int]:
    if priority is None:
        priority = REFERENCE_PRIORITY if tier == "reference" else 0
    if isinstance(priority, Mapping):
        unknown = set(priority) - set(devices)
        if unknown:
            raise ValueError(f"priority names device(s) {sorted(unknown)} the tier {tier!r} does not support ({devices})")
        return {str(device): int(rank) for device, rank in priority.items()}
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an int or a mapping of device type to int, got {priority!r}")
    return {device: priority for device in devices}


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
    for name in BUILTIN_PLUGINS:
        _import_plugin(name, lambda n=name: importlib.import_module(n))
    impls = importlib.import_module(IN_TREE_PLUGINS)
    for module in pkgutil.iter_modules(impls.__path__, prefix=f"{IN_TREE_PLUGINS}."):
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


def known_tiers() -> tuple[str, ...]:
    """Every tier name: poolbench's own (:data:`TIERS`) then plugins' new ones, in registration order."""
    load_plugins()
    return tuple(_TIER_ORDER)


def tiers(name: str) -> list[str]:
    """The tiers registered for ``name``, in :func:`known_tiers` order."""
    registered = _tiers_of(name)
    return [tier for tier in _TIER_ORDER if tier in registered]


def _tiers_of(name: str) -> dict[str, PoolerSpec]:
    load_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown pooler {name!r}; known poolers: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def specs() -> list[PoolerSpec]:
    """Every registered (pooler, tier), sorted by name then tier order."""
    load_plugins()
    return [spec for name in sorted(_REGISTRY) for tier in _TIER_ORDER if (spec := _REGISTRY[name].get(tier))]


def get_spec(name: str, tier: str | None = None, device: str | torch.device = "cpu") -> PoolerSpec:
    """The spec for ``name`` at ``tier``; ``tier=None`` picks the fastest available on ``device``."""
    registered = _tiers_of(name)
    if tier is not None:
        if tier not in registered:
            raise ValueError(f"pooler {name!r} has no {tier!r} tier; it has: {', '.join(tiers(name))}")
        return registered[tier]
    device_type = torch.device(device).type
    reasons = []
    for spec in by_priority(registered.values(), device_type):
        reason = spec.unavailable_reason(device_type)
        if reason is None:
            return spec
        reasons.append(f"{spec.tier}: {reason}")
    raise ValueError(f"no tier of {name!r} can run on {device_type!r}: {'; '.join(reasons) or 'none registered'}")


def by_priority(candidates: Iterable[PoolerSpec], device: str | torch.device) -> list[PoolerSpec]:
    """The specs that may be picked automatically on ``device``, highest priority first (ties: tier order)."""
    device_type = torch.device(device).type
    ranked = [spec for spec in candidates if device_type in spec.priority]
    return sorted(ranked, key=lambda spec: (-spec.priority[device_type], _TIER_ORDER.index(spec.tier)))


#: Tiers a measuring tool (run, layerbench, both gates) leaves out unless asked for by name, and why.
LEFT_OUT_BY_DEFAULT: Mapping[str, str] = {
    "reference": "the float64 reference tier loops over windows in Python: it is the ground truth the other "
                 "tiers are checked against, far too slow to time (ask for it by name, e.g. --tiers reference)",
}


def left_out_reason(tier: str, *, asked: Iterable[str] | None = None,
                    left_out: Mapping[str, str] = LEFT_OUT_BY_DEFAULT) -> str | None:
    """Why a tool leaves ``tier`` out (``None`` when it does not): it is in ``left_out`` and ``asked`` does not name it.

    ``left_out`` is the tool's own list (:data:`LEFT_OUT_BY_DEFAULT` plus, say, the instruction gate's
    uncounted tiers); ``asked`` is the tier names the user gave, ``None`` for "all".
    """
    if tier in left_out and tier not in (asked or ()):
        return left_out[tier]
    return None


def tiers_on(name: str, device: str | torch.device, *, asked: Iterable[str] | None = None,
             left_out: Mapping[str, str] = LEFT_OUT_BY_DEFAULT) -> dict[str, str | None]:
    """Every tier of ``name`` -> ``None`` if a tool runs it on ``device``, else why not; in :func:`known_tiers` order.

    The one rule for "which tiers run here", shared by ``poolbench run``, ``layerbench`` and the gates: a
    tier is out when it cannot run on ``device`` or the tool leaves it out (:func:`left_out_reason`).
    ``poolbench check`` passes ``left_out={}``: it runs every tier, the reference included.
    """
    asked = None if asked is None else tuple(asked)
    return {tier: left_out_reason(tier, asked=asked, left_out=left_out) or get_spec(name, tier).unavailable_reason(device)
            for tier in tiers(name)}


def check_tier_names(wanted: Iterable[str], extra: Iterable[str] = (), poolers: Iterable[str] | None = None) -> None:
    """Raise ``ValueError`` naming any tier in ``wanted`` that no pooler registers (``extra`` names are allowed).

    With ``poolers``, only their tiers count: a tier none of them has is as unknown as a misspelt one.
    """
    registered = known_tiers() if poolers is None else sorted({t for name in poolers for t in tiers(name)})
    allowed = (*registered, *extra)
    unknown = [tier for tier in wanted if tier not in allowed]
    if unknown:
        raise ValueError(f"unknown tier(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(allowed)}")


def unavailable_reason(name: str, tier: str, device: str | torch.device) -> str | None:
    """Why ``name[tier]`` cannot run on ``device``, or ``None`` if it can."""
    return get_spec(name, tier).unavailable_reason(device)


def _check_output_hook(label: str, geometry: tuple[int, int, int, int], module, args, output) -> None:
    check_output_shape(label, args[0], output, *geometry)


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
    if not isinstance(module, Pool2d):  # a plugin's bare nn.Module: check its output as Pool2d checks its own
        module.register_forward_hook(functools.partial(_check_output_hook, f"{name}[{spec.tier}]",
                                                       (channels, kernel_size, stride, padding)))
    module.pooler_name = name
    module.tier = spec.tier
    module.pooler_options = dict(options)  # what its MAC formula reads (e.g. a blur's filter_size)
    if device is not None:
        module = module.to(device)
    return module
