"""The authors' ResNet placement of DPP (visinf/dpp), offered beside the paper's.

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
* ``placement="authors"`` places the requested pooler at the authors' sites
  (so every pooler is compared at the same sites), and
  :class:`AverageDownSample` (the sum form, as the CUDA kernel) is the
  authors' own ResNet-50/101 layer (:func:`build_authors_resnet`).

A network name may carry its placement, ``"resnet50@authors"``: that is how a
run measures both placements side by side (``poolbench run --placement
both``) and how :func:`placement_comparison` finds them in a results file.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import pandas as pd
import torch
from torch import nn

from .base import Pool2d

__all__ = [
    "PLACEMENTS",
    "AverageDownSample",
    "build_authors_resnet",
    "placed_name",
    "placement_comparison",
    "placement_section",
    "split_placement",
    "swap_authors",
]

PLACEMENTS = ("paper", "authors")
SEPARATOR = "@"
#: The CUDA kernel's ε (``float epsilon = 0.001f``), added to the squared difference.
AUTHORS_EPS = 1e-3


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


class AverageDownSample(Pool2d):
    """The authors' ResNet-50/101 pooling layer (visinf/dpp ``models/cudads.lua``, ``AverageDownSample``).

    w_q = ((d_q² + ε) / Σ_window (d² + ε))^(λ/2) + α,  d = I − Ĩ,  Ĩ = avg_pool2d(I, 3, 2, 1) (padding
    counted), y = Σ w·I / Σ w over each 2×2 window at stride 2, α = e^θα, λ = e^θλ learned per channel.
    Computed by the DPP kernels of ``tier`` as a Full-DPP with the fixed guide F = 1/9, b = 0,
    ``scale_invariant=True`` and α′ = α·4^(λ/2) (the window-sum normalisation, see the module docstring).
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
        from .functional import dpp

        lam = self.log_lam.exp()
        alpha = self.log_alpha.exp() * torch.pow(4.0, lam / 2)
        weight = x.new_full((self.channels, 1, 3, 3), 1.0 / 9.0)
        return dpp(x, alpha, lam, 2, 2, 0, asym=False, guide=(weight, x.new_zeros(self.channels)),
                   eps2=AUTHORS_EPS, scale_invariant=True, tier=self.tier)


def _block_out_channels(block: nn.Module) -> int:
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_bn.num_features


def swap_authors(model: nn.Module, model_name: str, make: Callable) -> list:
    """Place ``make(site)`` at the authors' sites of an unmodified torchvision ``model_name``, in place.

    ResNets: the stem's max pool stays; each block with a stride-2 convolution gets all its convolutions
    (projection shortcut included) at stride 1 and becomes ``Sequential(block=…, pool=pooler)``, so the
    pooler (k2 s2) sees the block's output after the addition and ReLU.  VGG: as the paper.
    """
    from .models import PoolSite, _strided_convs, _swap_vgg, _tag

    if model_name.startswith("vgg"):
        return _swap_vgg(model, make)
    sites = []
    for layer_name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(model, layer_name)
        for index, block in enumerate(layer):
            strided = _strided_convs(block)
            if not strided:
                continue
            for conv in strided + ([block.downsample[0]] if block.downsample is not None else []):
                if conv.stride not in ((1, 1), (2, 2)):
                    raise ValueError(f"{layer_name}.{index} has stride {conv.stride}; only stride 2 is swapped")
                conv.stride = (1, 1)
            site = PoolSite(f"{layer_name}.{index}.pool", _block_out_channels(block), 2, 2, 0, "block")
            layer[index] = nn.Sequential(OrderedDict(block=block, pool=_tag(make(site), site)))
            sites.append(site)
    return sites


def build_authors_resnet(model_name: str, tier: str = "vectorized") -> nn.Module:
    """The authors' own ResNet-50/101: :class:`AverageDownSample` at the authors' sites (random weights)."""
    from .models import build_with

    base, _ = split_placement(model_name)
    if base not in ("resnet50", "resnet101"):
        raise ValueError(f"the authors' AverageDownSample network is a bottleneck ResNet (resnet50, resnet101), "
                         f"got {model_name!r}")
    return build_with(placed_name(base, "authors"), lambda site: AverageDownSample(site.channels, tier=tier))


# ----------------------------------------------------------------------------------------------
# the report's side-by-side comparison
# ----------------------------------------------------------------------------------------------

#: (column, network quantity) of the comparison; time overheads are ratios to the run's own baseline.
_OVERHEADS = (("params", "params_overhead_pct"), ("MACs", "macs_flop_counter"),
              ("forward", "latency_forward"), ("train step", "latency_train"))


def _overhead(net: pd.DataFrame, model: str, pooler: str, tier: str, quantity: str, baseline) -> float | None:
    """Overhead in % of ``pooler[tier]`` in network ``model`` vs the run's baseline network of the same name."""
    if quantity not in net:
        return None
    row = net[(net["model"] == model) & (net["pooler"] == pooler) & (net["tier"] == tier)]
    if row.empty or pd.isna(row.iloc[0][quantity]):
        return None
    if quantity == "params_overhead_pct":
        return float(row.iloc[0][quantity])
    base = net[(net["model"] == model) & (net["pooler"] == baseline[0]) & (net["tier"] == baseline[1])]
    if base.empty or pd.isna(base.iloc[0][quantity]):
        return None
    return 100.0 * (float(row.iloc[0][quantity]) / float(base.iloc[0][quantity]) - 1.0)


def placement_comparison(net: pd.DataFrame, baseline: tuple[str, str],
                         poolers: tuple[str, ...] = ("dpp_lite_sym", "dpp_full_sym")) -> list[dict]:
    """Rows with the parameter, MAC and time overheads of both placements side by side.

    ``net`` is the report's network table (one row per model × pooler × tier, one column per quantity);
    a placement a run did not measure shows "–" (``poolbench run --placement both`` measures both).
    Overheads are in % of the run's baseline network (``baseline`` = (pooler, tier)) of the same placement
    name, so every ratio comes from one run.
    """
    rows = []
    if net.empty:
        return rows
    for model in ("resnet50", "resnet101"):
        authors = placed_name(model, "authors")
        for pooler in poolers:
            tiers = sorted(set(net[(net["model"].isin((model, authors))) & (net["pooler"] == pooler)]["tier"]))
            for tier in tiers:
                row = {"network": model, "pooler": f"{pooler}[{tier}]"}
                for column, quantity in _OVERHEADS:
                    for placement, name in (("paper", model), ("authors", authors)):
                        value = _overhead(net, name, pooler, tier, quantity, baseline)
                        digits = 3 if quantity == "params_overhead_pct" else 1
                        row[f"{column} ({placement})"] = "–" if value is None else f"{value:+.{digits}f}%"
                rows.append(row)
    return rows


def placement_section(net: pd.DataFrame, baseline: tuple[str, str], table: Callable[[list[dict]], str]) -> str:
    """The report's markdown subsection for :func:`placement_comparison` ("" when no ResNet DPP was measured)."""
    rows = placement_comparison(net, baseline)
    if not rows:
        return ""
    note = ("Paper: the stem and, in each stride-2 block, the main path and the shortcut are pooled at the block "
            "input (3648 channels in ResNet-50/101). Authors (visinf/dpp `models/resnetdpp.lua`): the stem keeps "
            "its max pool and each stride-2 block pools its output after the addition and ReLU (3584 channels); "
            "the authors' own ResNet-50/101 used `AverageDownSample` there (2 parameters per channel, window-sum "
            "normalised) whatever DPP variant was asked for — here the measured pooler takes its place. Overheads "
            "are vs the unmodified network measured in the same run; \"–\": not measured (`poolbench run "
            "--placement both` measures both).\n\n")
    return "### Both placements, side by side\n\n" + note + table(rows)
