"""DPP's authors' ResNet (visinf/dpp), offered beside the paper's placement.

Read from visinf/dpp, ``models/resnetdpp.lua`` and ``models/cudads.lua``:

* the stem keeps its max pool (``Max(3,3,2,2,1,1)``);
* a stride-2 block runs all its convolutions, its 1×1 projection shortcut
  included, at stride 1, and pools its *output* — after the residual addition
  and the ReLU (``:add(nn.CAddTable(true)):add(ReLU(true)):add(pooling(n))``):
  one pooler per block, at the block's output channels, with a 2×2 window at
  stride 2.  In ResNet-50/101 that is 512 + 1024 + 2048 = 3584 pooled
  channels (the paper's placement: 3648, main path and shortcut separately,
  at the block input, plus the stem);
* bottleneck networks (ResNet-50/101) pool with ``AverageDownSample(n*4)``
  whatever pooling type is asked for: the CUDA layer
  ``SpatialInverseBilateralPooling`` guided by a fixed 3×3 stride-2 average
  (``nn.SpatialAveragePooling(3,3,2,2,1,1)``, padding counted) — a Full-DPP
  whose guide is not learned, 2 parameters per channel, α = λ = 1 at the
  start (θ = 0: its ``reset`` is commented out).  Basic-block networks use the
  requested DPP layer;
* the authors' code has no VGG: both placements replace VGG-16's max pools.

An inconsistency inside the authors' own code: the Lua DPP layers
(``visinf_package/DPP_sym_lite.lua`` …) divide d² + ε² by its window **mean**
(``SpatialAveragePooling(2,2,2,2)`` then ``CDivTable``) — poolbench's
``scale_invariant=True`` — while the CUDA kernel behind AverageDownSample
(``SpatialInverseBilateralPooling.cu``: ``calcVMAX`` summed over the 2×2
window, ``calcSUM`` divides by it) divides by the window **sum**.  As
(y/Σy)^(λ/2) = 4^(−λ/2)·(y/mean y)^(λ/2) and the weights are normalised, the
sum form is the mean form with α′ = α·4^(λ/2): the same family, but one
(α, λ) pools differently.  The paper's equations use neither.  Here:

* ``placement="paper"`` places the requested pooler as configured (the
  paper's form unless ``scale_invariant=True``);
* ``placement="authors"`` places the requested DPP variant at these sites
  (every DPP variant declares this network, ``impls/dpp_networks.py``; other
  poolers bring their own authors' networks or have none), and
  :class:`poolbench.dpp.AverageDownSample` (the sum form, as the CUDA kernel) is the
  authors' own ResNet-50/101 layer (:func:`poolbench.dpp.build_authors_resnet`,
  a pooler-less build of these sites).

A network name may carry its placement, ``"resnet50@authors"``: that is how a
run measures both placements side by side (``poolbench run --placement
both``) and how :func:`placement_comparison` finds them in a results file.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from torch import nn

from .paper import strided_convs
from .sites import PoolSite, tag

__all__ = ["swap_authors_resnet"]


def _block_out_channels(block: nn.Module) -> int:
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_bn.num_features


def swap_authors_resnet(model: nn.Module, make: Callable[[PoolSite], nn.Module]) -> list[PoolSite]:
    """Place ``make(site)`` at the authors' sites of an unmodified torchvision ``model_name``, in place.

    ResNets: the stem's max pool stays; each block with a stride-2 convolution gets all its convolutions
    (projection shortcut included) at stride 1 and becomes ``Sequential(block=…, pool=pooler)``, so the
    pooler (k2 s2) sees the block's output after the addition and ReLU.  The authors' code has no VGG,
    so VGG-16 declares no such placement.
    """
    sites = []
    for layer_name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(model, layer_name)
        for index, block in enumerate(layer):
            strided = strided_convs(block)
            if not strided:
                continue
            for conv in strided + ([block.downsample[0]] if block.downsample is not None else []):
                if conv.stride not in ((1, 1), (2, 2)):
                    raise ValueError(f"{layer_name}.{index} has stride {conv.stride}; only stride 2 is swapped")
                conv.stride = (1, 1)
            site = PoolSite(f"{layer_name}.{index}.pool", _block_out_channels(block), 2, 2, 0, "block")
            layer[index] = nn.Sequential(OrderedDict(block=block, pool=tag(make(site), site)))
            sites.append(site)
    return sites
