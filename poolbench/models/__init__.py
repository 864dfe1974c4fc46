"""The networks the paper evaluates, with any registered pooler at the paper's placement.

Where the poolers go (the paper's placement):

* **VGG-16**: each of the five ``MaxPool2d(2, 2)`` becomes the pooler
  (channels 64, 128, 256, 512, 512).
* **ResNet-50/101**: the stem ``MaxPool2d(3, 2, 1)`` becomes the pooler with
  k=3, s=2, pad=1; every stride-2 convolution of the first block of
  ``layer2``–``layer4`` (main path and projection shortcut) becomes stride 1
  and the pooler (k=2, s=2) downsamples its input instead.  The main path and
  the shortcut get separate pooler modules (each learns its own α, λ).

Why the main-path pooler sits on the *block input* (before ``conv1``):
torchvision's ResNet is "v1.5", which strides in the 3×3 ``conv2``; the
paper's ResNet (v1, as in He et al.'s Caffe models) strides in the first 1×1
convolution, whose input is the block input.  Pooling there gives
64 + 2·(256 + 512 + 1024) = 3648 pooled channels, i.e. 43,776 Full-DPP
parameters = 0.171% of ResNet-50 and 0.098% of ResNet-101, the slides'
0.172% / 0.098%; pooling ``conv2``'s 128/256/512-channel input would give
2752 channels (0.129%), which the paper's figures rule out.  Here ``conv1``
therefore runs at the pooled resolution, so the swapped ResNets need ~5%
fewer multiply-accumulates than torchvision's (the report shows both).

The swap is a pure function of (model name, pooler, tier, options): the
networks are built with random weights (``weights=None``, nothing is
downloaded).  ``pooler=None`` is the unmodified torchvision network, the
baseline every overhead is measured against.

Networks a pooler brings itself.  A pooler may declare, in its own file
(``poolbench.registry.register(networks=...)`` or
:func:`poolbench.registry.register_network`), the network its authors built
(``"resnet50@authors"``: LIP-ResNet, the antialiased ResNet, visinf/dpp's
DPP ResNet, …) and its own form of the paper's sites (``"resnet50"``: e.g.
LIP's logit trunk shared by a block's main path and shortcut, or strided
convolution being the unmodified ResNet).  At the authors' placement a
(network, pooler) pair exists only where the pooler declares it: building
any other raises ``ValueError`` ("not published"), never another pooler's
sites.  A network's own ``placements`` serve pooler-less builds only
(:func:`poolbench.dpp.build_authors_resnet` places the authors' own layer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from .. import registry
from .authors import swap_authors_resnet
from .paper import swap_resnet, swap_vgg
from .sites import SITE_ATTRIBUTE, PoolSite, tag

__all__ = [
    "MODELS",
    "PLACEMENTS",
    "ModelSpec",
    "names",
    "PoolSite",
    "build",
    "build_baseline",
    "build_with",
    "count_params",
    "create_at",
    "has_network",
    "layer_input_shapes",
    "network_declaration",
    "param_overhead_analytic",
    "pool_sites",
    "place",
    "placed_name",
    "placements_of",
    "pooler_modules",
    "register_model",
    "replace_poolers",
    "split_placement",
    "swap",
    "swap_in",
    "title",
]

Swap = Callable[[nn.Module, Callable[[PoolSite], nn.Module]], "list[PoolSite]"]


@dataclass(frozen=True)
class ModelSpec:
    """A network poolbench can measure: how to build it and where its poolers go.

    ``constructor()`` builds the unmodified network with random weights (the
    baseline); ``swap(model, make)`` places ``make(site)`` at every
    :class:`PoolSite` of such a network, in place, and returns the sites in
    forward order (the paper's placement); ``placements`` maps the name of any
    other placement the network declares (``"authors"``) to its swap for
    pooler-less builds (a registered pooler's authors' network is the pooler's
    own declaration); ``title`` is the report's name for it.
    """

    name: str
    title: str
    constructor: Callable[[], nn.Module]
    swap: Swap
    placements: Mapping[str, Swap] = field(default_factory=dict, hash=False)

    def swap_for(self, placement: str) -> Swap:
        """The swap of ``placement`` (``"paper"`` or one this network declares); ValueError otherwise."""
        if placement == "paper":
            return self.swap
        if placement not in self.placements:
            raise ValueError(f"network {self.name!r} declares no {placement!r} placement; it has "
                             f"{', '.join(('paper', *self.placements))}")
        return self.placements[placement]


#: Network name -> :class:`ModelSpec`; plugins add theirs with :func:`register_model`.
MODELS: dict[str, ModelSpec] = {}

#: Every placement name a network may declare ("paper" is every network's).
PLACEMENTS = ("paper", "authors")
SEPARATOR = "@"


def register_model(name: str, title: str, constructor: Callable[[], nn.Module], swap: Swap,
                   placements: Mapping[str, Swap] | None = None) -> ModelSpec:
    """Make ``name`` a network every command and the report can use (one file: a plugin module calls this).

    ``swap`` is the paper's placement; ``placements`` optionally adds others by name (see :data:`PLACEMENTS`).
    """
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"model name must be a non-empty identifier, got {name!r}")
    if name in MODELS and MODELS[name].constructor is not constructor:
        raise ValueError(f"model {name!r} is already registered")
    extra = dict(placements or {})
    for placement in extra:
        if placement not in PLACEMENTS or placement == "paper":
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS[1:])}, got {placement!r}")
    MODELS[name] = ModelSpec(name, title, constructor, swap, extra)
    return MODELS[name]


def split_placement(model_name: str) -> tuple[str, str]:
    """``"resnet50@authors"`` → ("resnet50", "authors"); a bare name is the paper's placement."""
    base, _, placement = model_name.partition(SEPARATOR)
    placement = placement or "paper"
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r} in {model_name!r}; expected one of {', '.join(PLACEMENTS)}")
    return base, placement


def placed_name(model_name: str, placement: str) -> str:
    """The network name a run records for ``model_name`` at ``placement`` (the paper's keeps the bare name)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    return model_name if placement == "paper" else f"{model_name}{SEPARATOR}{placement}"


def placements_of(model_name: str, poolers=None) -> tuple[str, ...]:
    """The placements at which ``model_name`` has networks of its own: ``"paper"`` first, then the others.

    A placement other than the paper's counts only where one of ``poolers`` (default: every registered
    pooler) declares a network there that is not its paper network (so VGG-16, whose antialiased form is
    maxblur at the paper's sites and which no other author rebuilt, has the paper's placement only).
    """
    base = _check_model(model_name).name
    poolers = registry.names() if poolers is None else list(poolers)
    extra = [placement for placement in PLACEMENTS[1:]
             if any(has_network(placed_name(base, placement), pooler) for pooler in poolers)]
    return ("paper", *extra)


def network_declaration(model_name: str, pooler: str) -> "registry.PoolerNetwork | None":
    """``pooler``'s own declaration for ``model_name`` (placement included), resolved: ``None`` if it has none.

    A declaration whose ``swap`` is ``None`` (the pooler's network at the paper's placement) resolves to the
    pooler's paper declaration, if any, keeping its ``source`` and ``note``.
    """
    base, placement = split_placement(model_name)
    _check_model(base)
    declared = registry.networks(pooler) if pooler in registry.names() else {}
    declaration = declared.get(placed_name(base, placement))
    if declaration is not None and declaration.swap is None:
        if placement == "paper":
            raise ValueError(f"{pooler}'s declaration of {base!r} has no swap: only another placement may say "
                             "'same as the paper's'")
        paper = declared.get(base)
        swap = paper.swap if paper is not None else MODELS[base].swap
        return registry.PoolerNetwork(swap, declaration.source, paper.param_overhead if paper else None,
                                      declaration.note)
    return declaration


def has_network(model_name: str, pooler: str) -> bool:
    """Whether (``model_name``, ``pooler``) is a network of its own to measure.

    Every pooler has the paper's placement; at another placement only where the pooler declares a
    network that is not its paper network (a declaration with ``swap=None`` says the two are the same).
    """
    base, placement = split_placement(model_name)
    if placement == "paper":
        return True
    declared = registry.networks(pooler) if pooler in registry.names() else {}
    declaration = declared.get(placed_name(_check_model(base).name, placement))
    return declaration is not None and declaration.swap is not None


def _swap_of(model_name: str, pooler: str | None) -> Swap:
    """The swap building ``pooler``'s ``model_name`` (placement included); ValueError where none is published."""
    spec = _check_model(model_name)
    base, placement = split_placement(model_name)
    if pooler is None:
        return spec.swap_for(placement)
    declaration = network_declaration(model_name, pooler)
    if declaration is not None:
        return declaration.swap
    if placement == "paper":
        return spec.swap
    declared = sorted(registry.networks(pooler)) if pooler in registry.names() else []
    raise ValueError(f"not published: {pooler}'s authors published no {spec.title} network, so {pooler} has no "
                     f"{placed_name(base, placement)!r} (it declares: {', '.join(declared) or 'none'}); measure "
                     f"it at the paper's placement ({base!r}) instead")


def _check_model(model_name: str) -> ModelSpec:
    """The network of ``model_name``, which may name a placement (``"resnet50@authors"``)."""
    base, _ = split_placement(model_name)
    if base not in MODELS:
        registry.load_plugins()  # a plugin may register networks too
    if base not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[base]


def names() -> list[str]:
    """Every registered network: poolbench's own, then plugins' (in registration order)."""
    registry.load_plugins()
    return list(MODELS)


def title(model_name: str) -> str:
    """The report's name for ``model_name`` (the name itself if unknown), with a non-default placement."""
    base, placement = split_placement(model_name)
    spec = MODELS.get(base)
    if spec is None:
        return model_name
    return spec.title if placement == "paper" else f"{spec.title} ({placement}' network)"


def build_baseline(model_name: str) -> nn.Module:
    """The unmodified network with random weights (for torchvision's: max pooling, strided convolutions)."""
    return _check_model(model_name).constructor()


def place(make: Callable[[PoolSite], nn.Module], site: PoolSite) -> nn.Module:
    """``make(site)``, marked as the pooler of ``site`` (what a model's ``swap`` puts in the network)."""
    return tag(make(site), site)


def swap(model: nn.Module, model_name: str, make: Callable[[PoolSite], nn.Module],
         pooler: str | None = None) -> list[PoolSite]:
    """Place ``make(site)`` at every :class:`PoolSite` of an unmodified ``model_name`` network, in place.

    Returns the sites in forward order.  The network must be ``model_name``
    as built (a second swap would find no max pools to replace).  With ``pooler``, the network is the
    one that pooler declares for ``model_name`` (``"<model>@authors"``: its authors' network; ValueError
    "not published" where it declares none); without, the network's own placement.
    """
    return _swap_of(model_name, pooler)(model, make)


def _torchvision(constructor_name: str) -> Callable[[], nn.Module]:
    def construct() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, constructor_name)(weights=None)
    return construct


# The authors' code (visinf/dpp) has no VGG: VGG-16 has the paper's placement only.
register_model("vgg16", "VGG-16", _torchvision("vgg16"), swap_vgg)
register_model("resnet50", "ResNet-50", _torchvision("resnet50"), swap_resnet, {"authors": swap_authors_resnet})
register_model("resnet101", "ResNet-101", _torchvision("resnet101"), swap_resnet, {"authors": swap_authors_resnet})


def build_with(model_name: str, make: Callable[[PoolSite], nn.Module], pooler: str | None = None) -> nn.Module:
    """The network with ``make(site)`` placed at every :class:`PoolSite` (random weights).

    ``pooler`` picks the network that pooler declares for ``model_name`` (see :func:`swap`).
    """
    model = build_baseline(model_name)
    swap(model, model_name, make, pooler)
    return model


def build(
    model_name: str,
    pooler: str | None = None,
    tier: str | None = None,
    *,
    device: str | torch.device | None = None,
    placement: str = "paper",
    **options,
) -> nn.Module:
    """``model_name`` with registered pooler ``pooler`` at the paper's placement (or ``placement="authors"``).

    ``placement="authors"`` builds the network the pooler's authors built (the pooler's own declaration,
    e.g. sebgao/LIP's LIP-ResNet-50 for ``"lip"``); ValueError "not published" where they built none.
    ``pooler=None`` returns the unmodified torchvision network (the baseline).
    ``tier=None`` picks the fastest tier available on ``device``; ``options``
    go to every pooler's factory (e.g. ``alpha``, ``lam``, ``seed``).  Raises
    ``ValueError`` (with the registry's reason) if the tier cannot run there.
    """
    if placement != "paper":
        model_name = placed_name(_check_model(model_name).name, placement)
    model = build_baseline(model_name)
    if pooler is not None:
        swap_in(model, model_name, pooler, tier, device=device, **options)
    return model.to(device) if device is not None else model


def swap_in(model: nn.Module, model_name: str, pooler: str, tier: str | None = None, *,
            device: str | torch.device | None = None, **options) -> list[PoolSite]:
    """Place registered ``pooler[tier]`` at every site of an unmodified ``model_name`` network, in place.

    The one way a network gets its poolers (:func:`build` and the metrics'
    subjects use it); ``ValueError`` with the registry's reason if the tier
    cannot run on ``device``.
    """
    spec = registry.get_spec(pooler, tier, device or "cpu")
    if device is not None and (reason := spec.unavailable_reason(device)) is not None:
        raise ValueError(reason)
    return swap(model, model_name, lambda site: create_at(site, pooler, spec.tier, **options), pooler)


def create_at(site: PoolSite, pooler: str, tier: str | None = None, **options) -> nn.Module:
    """Registered ``pooler[tier]`` for ``site``: its channels and window, with the site's own options.

    What a network places at the site and what a per-layer measurement of the site builds.
    """
    return registry.create(pooler, site.channels, *site.geometry, tier=tier, **{**options, **dict(site.options)})


def replace_poolers(model: nn.Module, make: Callable[[PoolSite], nn.Module]) -> None:
    """Swap every pooler already placed in ``model`` for ``make(site)``, in place (cheaper than a rebuild)."""
    for name, old in pooler_modules(model).items():
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        site = getattr(old, SITE_ATTRIBUTE)
        setattr(parent, attribute, tag(make(site), site))


def pool_sites(model_name: str, pooler: str | None = None) -> list[PoolSite]:
    """Every place a pooler goes in ``model_name``, in forward order (built on the meta device: no memory).

    With ``pooler``, the sites of the network that pooler declares for ``model_name`` (see :func:`swap`).
    """
    sites: list[PoolSite] = []

    def record(site: PoolSite) -> nn.Module:
        sites.append(site)
        return nn.MaxPool2d(*site.geometry)

    with torch.device("meta"):
        build_with(model_name, record, pooler)
    return sites


def pooler_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> pooler module for every pooler placed by :func:`build_with`."""
    return {name: module for name, module in model.named_modules() if hasattr(module, SITE_ATTRIBUTE)}


def layer_input_shapes(model_name: str, batch: int = 1, resolution: int = 224,
                       pooler: str | None = None) -> list[tuple[PoolSite, tuple[int, ...]]]:
    """(site, input shape) of every pooling layer, recorded with forward hooks on a meta-device forward.

    At the paper's sites the shapes do not depend on the pooler (each keeps the max-pool output size),
    so the network is built with ``nn.MaxPool2d`` at every site.  A network a pooler declares itself
    (``pooler``; e.g. LIP-ResNet, whose blocks pass shared logit features to their poolers) is built
    with that pooler's own modules.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    own = pooler is not None and network_declaration(model_name, pooler) is not None
    if own:
        tier = "vectorized" if "vectorized" in registry.tiers(pooler) else registry.tiers(pooler)[0]
        make = lambda site: create_at(site, pooler, tier, **({"seed": 0} if registry.get_spec(pooler, tier).stochastic else {}))  # noqa: E731
    else:
        make = lambda site: nn.MaxPool2d(*site.geometry)  # noqa: E731
    with torch.device("meta"):
        model = build_with(model_name, make, pooler)
    handles = [
        module.register_forward_pre_hook(lambda module, args, name=name: shapes.__setitem__(name, tuple(args[0].shape)))
        for name, module in pooler_modules(model).items()
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(batch, 3, resolution, resolution, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return [(site, shapes[site.name]) for site in pool_sites(model_name, pooler)]


def count_params(model: nn.Module) -> int:
    """Learned parameters of ``model`` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def param_overhead_analytic(model_name: str, pooler: str, tier: str | None = None) -> int:
    """Parameters ``pooler`` adds to ``model_name``: the registry's per-site ``param_count`` summed over the
    sites, or the pooler's own formula for a network it declares with one (shared or replaced modules)."""
    spec = registry.get_spec(pooler, tier) if tier else registry.get_spec(pooler, registry.tiers(pooler)[0])
    sites = pool_sites(model_name, pooler)
    declaration = network_declaration(model_name, pooler)
    if declaration is not None and declaration.param_overhead is not None:
        return declaration.param_overhead(sites)
    return sum(spec.param_count(site.channels, site.kernel_size) for site in sites)
