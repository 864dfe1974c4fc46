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
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import registry

__all__ = [
    "MODELS",
    "ModelSpec",
    "names",
    "PoolSite",
    "build",
    "build_baseline",
    "build_with",
    "count_params",
    "layer_input_shapes",
    "param_overhead_analytic",
    "pool_sites",
    "place",
    "pooler_modules",
    "register_model",
    "replace_poolers",
    "swap",
    "swap_in",
    "title",
]

#: Attribute set on every pooler placed by :func:`build_with`, so it can be found again.
SITE_ATTRIBUTE = "poolbench_site"


@dataclass(frozen=True)
class PoolSite:
    """One place in a network where a pooler goes.

    ``name`` is the pooler's qualified module name in the swapped network
    (what ``named_modules`` and the FLOP counters report); ``role`` is
    ``"vgg"``, ``"stem"``, ``"main"`` (a block's main path) or ``"shortcut"``.
    """

    name: str
    channels: int
    kernel_size: int
    stride: int
    padding: int
    role: str

    @property
    def geometry(self) -> tuple[int, int, int]:
        return self.kernel_size, self.stride, self.padding


Swap = Callable[[nn.Module, Callable[[PoolSite], nn.Module]], "list[PoolSite]"]


@dataclass(frozen=True)
class ModelSpec:
    """A network poolbench can measure: how to build it and where its poolers go.

    ``constructor()`` builds the unmodified network with random weights (the
    baseline); ``swap(model, make)`` places ``make(site)`` at every
    :class:`PoolSite` of such a network, in place, and returns the sites in
    forward order; ``title`` is the report's name for it.
    """

    name: str
    title: str
    constructor: Callable[[], nn.Module]
    swap: Swap


#: Network name -> :class:`ModelSpec`; plugins add theirs with :func:`register_model`.
MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, title: str, constructor: Callable[[], nn.Module], swap: Swap) -> ModelSpec:
    """Make ``name`` a network every command and the report can use (one file: a plugin module calls this)."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"model name must be a non-empty identifier, got {name!r}")
    if name in MODELS and MODELS[name].constructor is not constructor:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = ModelSpec(name, title, constructor, swap)
    return MODELS[name]


def _check_model(model_name: str) -> ModelSpec:
    """The network of ``model_name``, which may name a placement (``"resnet50@authors"``)."""
    from .placement_authors import split_placement

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
    from .placement_authors import split_placement

    base, placement = split_placement(model_name)
    spec = MODELS.get(base)
    if spec is None:
        return model_name
    return spec.title if placement == "paper" else f"{spec.title} ({placement}' placement)"


def build_baseline(model_name: str) -> nn.Module:
    """The unmodified network with random weights (for torchvision's: max pooling, strided convolutions)."""
    return _check_model(model_name).constructor()


def _pooled(pooler: nn.Module, conv: nn.Module) -> nn.Sequential:
    # A named Sequential keeps the pooler visible to named_modules, forward
    # hooks and both FLOP counters' per-module breakdowns.
    return nn.Sequential(OrderedDict(pool=pooler, conv=conv))


def _swap_vgg(model: nn.Module, make: Callable[[PoolSite], nn.Module]) -> list[PoolSite]:
    sites, channels = [], None
    for index, layer in enumerate(model.features):
        if isinstance(layer, nn.Conv2d):
            channels = layer.out_channels
        elif isinstance(layer, nn.MaxPool2d):
            site = PoolSite(f"features.{index}", channels, 2, 2, 0, "vgg")
            model.features[index] = _tag(make(site), site)
            sites.append(site)
    return sites


def _strided_convs(block: nn.Module) -> list[nn.Conv2d]:
    main = [getattr(block, name) for name in ("conv1", "conv2", "conv3") if hasattr(block, name)]
    return [conv for conv in main if isinstance(conv, nn.Conv2d) and conv.stride != (1, 1)]


def _swap_resnet(model: nn.Module, make: Callable[[PoolSite], nn.Module]) -> list[PoolSite]:
    stem = PoolSite("maxpool", model.conv1.out_channels, 3, 2, 1, "stem")
    model.maxpool = _tag(make(stem), stem)
    sites = [stem]
    for layer_name in ("layer1", "layer2", "layer3", "layer4"):
        for block_index, block in enumerate(getattr(model, layer_name)):
            strided = _strided_convs(block)
            if not strided:
                continue
            for conv in strided:
                if conv.stride != (2, 2):
                    raise ValueError(f"{layer_name}.{block_index} has stride {conv.stride}; only stride 2 is swapped")
                conv.stride = (1, 1)
            prefix = f"{layer_name}.{block_index}"
            main = PoolSite(f"{prefix}.conv1.pool", block.conv1.in_channels, 2, 2, 0, "main")
            block.conv1 = _pooled(_tag(make(main), main), block.conv1)
            sites.append(main)
            shortcut_conv = block.downsample[0] if block.downsample is not None else None
            if shortcut_conv is not None and shortcut_conv.stride == (2, 2):
                shortcut_conv.stride = (1, 1)
                shortcut = PoolSite(f"{prefix}.downsample.0.pool", shortcut_conv.in_channels, 2, 2, 0, "shortcut")
                block.downsample[0] = _pooled(_tag(make(shortcut), shortcut), shortcut_conv)
                sites.append(shortcut)
    return sites


def _tag(module: nn.Module, site: PoolSite) -> nn.Module:
    setattr(module, SITE_ATTRIBUTE, site)
    return module


def place(make: Callable[[PoolSite], nn.Module], site: PoolSite) -> nn.Module:
    """``make(site)``, marked as the pooler of ``site`` (what a model's ``swap`` puts in the network)."""
    return _tag(make(site), site)


def swap(model: nn.Module, model_name: str, make: Callable[[PoolSite], nn.Module]) -> list[PoolSite]:
    """Place ``make(site)`` at every :class:`PoolSite` of an unmodified ``model_name`` network, in place.

    Returns the sites in forward order.  The network must be ``model_name``
    as built (a second swap would find no max pools to replace).
    ``"<model>@authors"`` uses the authors' placement (:mod:`poolbench.placement_authors`).
    """
    from .placement_authors import split_placement, swap_authors

    spec = _check_model(model_name)
    if split_placement(model_name)[1] == "authors":
        return swap_authors(model, spec.name, make)
    return spec.swap(model, make)


def _torchvision(constructor_name: str) -> Callable[[], nn.Module]:
    def construct() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, constructor_name)(weights=None)
    return construct


register_model("vgg16", "VGG-16", _torchvision("vgg16"), _swap_vgg)
register_model("resnet50", "ResNet-50", _torchvision("resnet50"), _swap_resnet)
register_model("resnet101", "ResNet-101", _torchvision("resnet101"), _swap_resnet)


def build_with(model_name: str, make: Callable[[PoolSite], nn.Module]) -> nn.Module:
    """The network with ``make(site)`` placed at every :class:`PoolSite` (random weights)."""
    model = build_baseline(model_name)
    swap(model, model_name, make)
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

    ``pooler=None`` returns the unmodified torchvision network (the baseline).
    ``tier=None`` picks the fastest tier available on ``device``; ``options``
    go to every pooler's factory (e.g. ``alpha``, ``lam``, ``seed``).  Raises
    ``ValueError`` (with the registry's reason) if the tier cannot run there.
    """
    from .placement_authors import placed_name

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
    return swap(model, model_name, lambda site: registry.create(pooler, site.channels, *site.geometry,
                                                                tier=spec.tier, **options))


def replace_poolers(model: nn.Module, make: Callable[[PoolSite], nn.Module]) -> None:
    """Swap every pooler already placed in ``model`` for ``make(site)``, in place (cheaper than a rebuild)."""
    for name, old in pooler_modules(model).items():
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        site = getattr(old, SITE_ATTRIBUTE)
        setattr(parent, attribute, _tag(make(site), site))


def pool_sites(model_name: str) -> list[PoolSite]:
    """Every place a pooler goes in ``model_name``, in forward order (built on the meta device: no memory)."""
    sites: list[PoolSite] = []

    def record(site: PoolSite) -> nn.Module:
        sites.append(site)
        return nn.MaxPool2d(*site.geometry)

    with torch.device("meta"):
        build_with(model_name, record)
    return sites


def pooler_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> pooler module for every pooler placed by :func:`build_with`."""
    return {name: module for name, module in model.named_modules() if hasattr(module, SITE_ATTRIBUTE)}


def layer_input_shapes(model_name: str, batch: int = 1, resolution: int = 224) -> list[tuple[PoolSite, tuple[int, ...]]]:
    """(site, input shape) of every pooling layer, recorded with forward hooks on a meta-device forward.

    The shapes do not depend on the pooler (each keeps the max-pool output
    size), so the network is built with ``nn.MaxPool2d`` at every site.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    with torch.device("meta"):
        model = build_with(model_name, lambda site: nn.MaxPool2d(*site.geometry))
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
    return [(site, shapes[site.name]) for site in pool_sites(model_name)]


def count_params(model: nn.Module) -> int:
    """Learned parameters of ``model`` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def param_overhead_analytic(model_name: str, pooler: str, tier: str | None = None) -> int:
    """Parameters ``pooler`` adds to ``model_name`` according to the registry's ``param_count``."""
    spec = registry.get_spec(pooler, tier) if tier else registry.get_spec(pooler, registry.tiers(pooler)[0])
    return sum(spec.param_count(site.channels, site.kernel_size) for site in pool_sites(model_name))
