"""LIP, Local Importance-based Pooling (Gao, Wang & Wu, ICCV 2019).

    y = Σ_q e^{l_q}·x_q / Σ_q e^{l_q}     over each window
    l = logit module (x)  ∈ (0, 12)       (at the input's resolution)

This follows the authors' code (sebgao/LIP, imagenet/lip_resnet.py):
``lip2d`` is ``avg_pool2d(x·e^l) / avg_pool2d(e^l)`` — the ratio of window
*sums*, since the counts cancel, so padding adds nothing.  The logit module
(``logit_conv``) is one of:

* ``"bottleneck"`` (official, "Bottleneck-128"): a trunk 1×1 C→128 conv →
  InstanceNorm → ReLU → 3×3 128→128 conv → InstanceNorm → ReLU
  (``BottleneckShared``) and a head 1×1 128→C conv → InstanceNorm → 12·sigmoid
  (``BottleneckLIP``); parameters 258·C + 147,968.  In LIP-ResNet one trunk,
  run on the block input, is shared by the heads of the block's main path and
  shortcut (see :func:`lip_resnet` and :func:`shared_trunk_resnet`); alone, a
  layer runs its own trunk on its own input.
* ``"full"``: ``SimplifiedLIP``, Conv2d(C, C, 3, padding=1) → InstanceNorm →
  12·sigmoid, 9·C² + 2·C parameters.  The official network uses it only at the
  stem, where LIP replaces the 3×3 max pool; at every other site its C²
  weights would cost far more than the authors' network does.
* ``"depthwise"``: one 3×3 filter per channel, 11·C parameters — a cheap
  variant, not the authors'.
* ``"auto"`` (default): ``"full"`` for a 3×3 window (the ResNet stem's
  k3 s2 p1, the only 3×3 site of the paper's placement) and ``"bottleneck"``
  otherwise — what LIP-ResNet puts at each kind of site.

The last conv of every logit module is initialised to 0 (the official
``init_layer``), so LIP starts as average pooling (constant logits 6); the
trunk's convolutions get the ResNet's Kaiming initialisation.

Numerics: the window weights are a max-subtracted softmax of l (bounded in
(0, 12) anyway); the instance norm is written out (biased variance, eps 1e-5
as nn.InstanceNorm2d) so that 1×1 maps, which nn.InstanceNorm2d rejects,
just normalise to β.  Half precision runs in float32.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from poolbench.impls._window import compute_dtype, softmax_pool, unfold_windows
from poolbench.base import Pool2d
from poolbench.models.paper import strided_convs, swap_resnet
from poolbench.models.sites import PoolSite, tag
from poolbench.registry import GradientRule, PoolerNetwork, register
from poolbench.validation import check_input

#: The authors' SoftGate scale: logits lie in (0, COEFF).
COEFF = 12.0
INSTANCE_NORM_EPS = 1e-5
#: The official logit module's width (``BOTTLENECK_WIDTH``).
BOTTLENECK_WIDTH = 128

LOGIT_CONVS = ("auto", "bottleneck", "full", "depthwise")
OFFICIAL = "sebgao/LIP imagenet/lip_resnet.py"


def resolve_logit_conv(logit_conv: str, kernel_size: int) -> str:
    """The logit module a site gets: ``"auto"`` is SimplifiedLIP for a 3×3 window, the bottleneck otherwise."""
    if logit_conv not in LOGIT_CONVS:
        raise ValueError(f"logit_conv must be one of {', '.join(LOGIT_CONVS)}, got {logit_conv!r}")
    if logit_conv == "auto":
        return "full" if kernel_size == 3 else "bottleneck"
    return logit_conv


def trunk_param_count(channels: int) -> int:
    """``BottleneckShared``: 1×1 C→128, 3×3 128→128 (no biases) and two InstanceNorms' γ, β."""
    width = BOTTLENECK_WIDTH
    return channels * width + 2 * width + 9 * width * width + 2 * width


def head_param_count(channels: int) -> int:
    """``BottleneckLIP``: 1×1 128→C (no bias) and the InstanceNorm's γ, β."""
    return BOTTLENECK_WIDTH * channels + 2 * channels


def lip_param_count(channels: int, logit_conv: str = "auto", kernel_size: int = 2) -> int:
    """Learned parameters of one LIP layer with its own logit module."""
    form = resolve_logit_conv(logit_conv, kernel_size)
    if form == "bottleneck":
        return trunk_param_count(channels) + head_param_count(channels)
    conv = 9 * channels * channels if form == "full" else 9 * channels
    return conv + 2 * channels


def lip_macs(g, options) -> int:
    """MACs of one LIP layer: its logit module at every input position, then the softmax-weighted window sum.

    Per position: bottleneck 128·C + 9·128² + 128·C convolutions, two InstanceNorms + ReLUs on 128 maps
    (8 each) and the head's InstanceNorm + 12·sigmoid (9 per channel); SimplifiedLIP 9·C (depthwise 9) per
    element and 9 for norm and gate; then 7 per window tap (softmax 5, w·x and Σ).
    """
    form = resolve_logit_conv(str(options.get("logit_conv", "auto")), g.kernel_size)
    width = BOTTLENECK_WIDTH
    if form == "bottleneck":
        positions = g.batch * g.height * g.width
        logits = positions * (2 * width * g.channels + 9 * width * width + 16 * width + 9 * g.channels)
    else:
        logits = (9 * (g.channels if form == "full" else 1) + 9) * g.inputs
    return logits + 7 * g.taps * g.outputs()


def _instance_norm(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = z.mean((2, 3), keepdim=True)
    var = (z - mean).square().mean((2, 3), keepdim=True)
    z = (z - mean) * torch.rsqrt(var + INSTANCE_NORM_EPS)
    return z * weight.to(z.dtype).view(1, -1, 1, 1) + bias.to(z.dtype).view(1, -1, 1, 1)


class InstanceNorm(nn.Module):
    """``nn.InstanceNorm2d(C, affine=True)`` written out, so a 1×1 map normalises to β instead of raising."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _instance_norm(z, self.weight, self.bias)


class LogitTrunk(nn.Module):
    """The official ``BottleneckShared``: 1×1 C→128, IN, ReLU, 3×3 128→128, IN, ReLU (shared by a block's heads)."""

    def __init__(self, channels: int):
        super().__init__()
        width = BOTTLENECK_WIDTH
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.bn1 = InstanceNorm(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = InstanceNorm(width)
        for conv in (self.conv1, self.conv2):  # the ResNet's initialisation of every convolution
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class LogitHead(nn.Module):
    """The official ``BottleneckLIP`` post-processing: 1×1 128→C (zero-initialised), IN, 12·sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(BOTTLENECK_WIDTH, channels, 1, bias=False)
        nn.init.zeros_(self.conv.weight)
        self.bn = InstanceNorm(channels)

    def forward(self, shared: torch.Tensor) -> torch.Tensor:
        return COEFF * torch.sigmoid(self.bn(self.conv(shared)))


#: The logit trunk normalises whole planes and gates them through ReLUs: in float32 a forward that lands
#: on the other side of one ReLU kink moves a few input-gradient elements by O(1) relative, and a
#: per-channel parameter gradient by up to ~3·10⁻³ of its norm (measured at VGG-16's second pooling layer,
#: 1×128×112², against the same code in float64), while a wrong formula moves them by O(1).
KINKED_TRUNK_GRADIENTS = GradientRule(
    input="plane", tolerance_scale=4.0,
    why="LIP's instance-normalised, ReLU-gated logit trunk: float32 rounding can flip a ReLU kink, so the input "
        "gradient is judged per plane and gradients within 4× the tolerance")

# ----------------------------------------------------------------------------------------------
# LIP's own ResNets: one logit trunk per stride-2 block, shared by the block's two heads
# ----------------------------------------------------------------------------------------------

class SharedTrunkBottleneck(nn.Module):
    """A torchvision bottleneck whose two LIP poolers share one logit trunk, run once on the block input.

    ``layout="paper"``: the paper's sites — ``conv1 = (pool, conv)`` and ``downsample[0] = (pool, conv)``
    both pool the block input.  ``layout="authors"``: the official LIP ``Bottleneck`` (stride 2) — conv1 at
    full resolution, ``conv2 = (LIP, 1×1 conv)`` pools conv1's output, ``downsample = (LIP, 1×1 conv, BN)``
    pools the block input.  Either way ``bottleneck_shared(x)`` feeds both heads, as upstream.
    """

    def __init__(self, block: nn.Module, trunk: LogitTrunk, layout: str):
        super().__init__()
        if layout not in ("paper", "authors"):
            raise ValueError(f"layout must be 'paper' or 'authors', got {layout!r}")
        self.layout = layout
        for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu", "downsample"):
            setattr(self, name, getattr(block, name))
        self.bottleneck_shared = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.bottleneck_shared(x)
        if self.layout == "paper":
            out = self.conv1.conv(self.conv1.pool(x, shared))
            out = self.relu(self.bn2(self.conv2(self.relu(self.bn1(out)))))
            identity = self.downsample[0].conv(self.downsample[0].pool(x, shared))
        else:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.conv2[1](self.conv2[0](out, shared))
            out = self.relu(self.bn2(out))
            identity = self.downsample[1](self.downsample[0](x, shared))
        out = self.bn3(self.conv3(out))
        for layer in self.downsample[1 if self.layout == "paper" else 2:]:
            identity = layer(identity)
        return self.relu(out + identity)


def _share(block: nn.Module, main: LIPPool, shortcut: LIPPool, trunk_channels: int, layout: str) -> nn.Module:
    """The block with one trunk for both heads; unchanged when its sites hold other modules (e.g. the
    placeholders :func:`poolbench.models.pool_sites` lists sites with)."""
    if not (isinstance(main, LIPPool) and isinstance(shortcut, LIPPool)):
        return block
    if main.logit_conv != "bottleneck" or shortcut.logit_conv != "bottleneck":
        raise ValueError("a LIP block shares a bottleneck logit trunk: its poolers need logit_conv='bottleneck'")
    trunk = shortcut.trunk if shortcut.channels == trunk_channels else LogitTrunk(trunk_channels)
    main.trunk = shortcut.trunk = None
    return SharedTrunkBottleneck(block, trunk, layout)


def shared_trunk_resnet(model: nn.Module, make) -> list[PoolSite]:
    """The paper's sites with LIP's per-site modules, each stride-2 block's two heads sharing one trunk."""
    sites = swap_resnet(model, make)
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for index, block in enumerate(layer):
            main = getattr(block.conv1, "pool", None)
            shortcut = getattr(block.downsample[0], "pool", None) if block.downsample is not None else None
            if isinstance(main, LIPPool) and isinstance(shortcut, LIPPool) and main.logit_conv == "bottleneck":
                layer[index] = _share(block, main, shortcut, main.channels, "paper")
    return sites


def shared_trunk_param_overhead(sites: list[PoolSite]) -> int:
    """Σ per-site LIP parameters, less one trunk per block whose main path and shortcut share it."""
    total = sum(lip_param_count(site.channels, "auto", site.kernel_size) for site in sites)
    blocks = {site.name.split(".conv1.pool")[0] for site in sites if site.role == "main"}
    shared = [site for site in sites if site.role == "shortcut" and site.name.split(".downsample")[0] in blocks
              and site.kernel_size != 3]
    return total - sum(trunk_param_count(site.channels) for site in shared)


def lip_resnet(model: nn.Module, make) -> list[PoolSite]:
    """sebgao/LIP's LIP-ResNet (imagenet/lip_resnet.py) from an unmodified torchvision ResNet, in place.

    The stem's max pool becomes SimplifiedLIP (k3 s2 p1); every stride-2 bottleneck runs conv1 at full
    resolution, pools its output with a LIP head (k3 s2 p1) and turns the 3×3 conv2 into a 1×1 conv; its
    shortcut pools the block input with a second head before a stride-1 1×1 conv; one ``BottleneckShared``
    trunk on the block input feeds both heads.
    """
    sites = []
    stem = PoolSite("maxpool", model.conv1.out_channels, 3, 2, 1, "stem", (("logit_conv", "full"),))
    model.maxpool = tag(make(stem), stem)
    sites.append(stem)
    bottleneck = (("logit_conv", "bottleneck"),)
    for layer_name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(model, layer_name)
        for index, block in enumerate(layer):
            if not strided_convs(block):
                continue
            if not hasattr(block, "conv3") or block.downsample is None:
                raise ValueError(f"LIP-ResNet is built from bottleneck ResNets; {layer_name}.{index} is not one")
            prefix = f"{layer_name}.{index}"
            planes, inplanes = block.conv2.in_channels, block.conv1.in_channels
            main = PoolSite(f"{prefix}.conv2.0", planes, 3, 2, 1, "main", bottleneck)
            shortcut = PoolSite(f"{prefix}.downsample.lip", inplanes, 3, 2, 1, "shortcut", bottleneck)
            main_pool, shortcut_pool = tag(make(main), main), tag(make(shortcut), shortcut)
            conv2 = nn.Conv2d(planes, planes, 1, bias=False)
            nn.init.kaiming_normal_(conv2.weight, mode="fan_out", nonlinearity="relu")
            block.conv2 = nn.Sequential(main_pool, conv2)
            projection = block.downsample[0]
            projection.stride = (1, 1)
            block.downsample = nn.Sequential(OrderedDict(lip=shortcut_pool, conv=projection, bn=block.downsample[1]))
            layer[index] = _share(block, main_pool, shortcut_pool, inplanes, "authors")
            sites += [main, shortcut]
    return sites


def lip_resnet_param_overhead(sites: list[PoolSite]) -> int:
    """LIP-ResNet vs torchvision's: SimplifiedLIP at the stem; per block a trunk, two heads, 3×3 conv2 → 1×1."""
    total = 0
    for site in sites:
        if site.role == "stem":
            total += lip_param_count(site.channels, "full")
        elif site.role == "main":
            total += head_param_count(site.channels) - 8 * site.channels * site.channels
        else:
            total += head_param_count(site.channels) + trunk_param_count(site.channels)
    return total


#: The paper's sites in LIP's own form (same sites, the official per-site modules, shared trunks).
SHARED_TRUNK_RESNET = PoolerNetwork(shared_trunk_resnet, OFFICIAL, shared_trunk_param_overhead,
                                    "the paper's sites; a stride-2 block's main-path and shortcut heads share one "
                                    "logit trunk, as the official Bottleneck's")
#: LIP-ResNet-50/101 as the authors built them.
LIP_RESNET = PoolerNetwork(lip_resnet, OFFICIAL, lip_resnet_param_overhead, "LIP-ResNet (Bottleneck-128 logits)")


@register(
    "lip",
    "vectorized",
    params="258·C + 147,968 (bottleneck); 9·C² + 2·C at a 3×3 window (SimplifiedLIP)",
    param_count=lambda channels, kernel_size: lip_param_count(channels, "auto", kernel_size),
    macs=lip_macs,
    family="baseline",
    gradient_rule=KINKED_TRUNK_GRADIENTS,
    networks={
        "resnet50": SHARED_TRUNK_RESNET,
        "resnet101": SHARED_TRUNK_RESNET,
        "resnet50@authors": LIP_RESNET,
        "resnet101@authors": LIP_RESNET,
    },
)
class LIPPool(Pool2d):
    """Σ e^l·x / Σ e^l with logits l from the official logit modules (Gao et al. 2019); see the module doc."""

    def __init__(self, channels, kernel_size=2, stride=2, padding=0, *, logit_conv: str = "auto"):
        super().__init__(channels, kernel_size, stride, padding)
        self.logit_conv = resolve_logit_conv(logit_conv, self.kernel_size)
        if self.logit_conv == "bottleneck":
            self.trunk: LogitTrunk | None = LogitTrunk(channels)
            self.head = LogitHead(channels)
            return
        in_per_group = channels if self.logit_conv == "full" else 1
        self.logit_weight = nn.Parameter(torch.zeros(channels, in_per_group, 3, 3))
        self.norm_weight = nn.Parameter(torch.ones(channels))
        self.norm_bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
        """Pool ``x``; ``shared`` is the trunk's output when a LIP block shares one trunk between its heads."""
        if shared is None:
            return super().forward(x)
        check_input(x, self.channels, self.kernel_size, self.stride, self.padding)
        return self.pool(x, shared)

    def logits(self, x: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
        """The importance logits l (N, C, H, W), in (0, 12)."""
        if self.logit_conv == "bottleneck":
            if shared is None:
                if self.trunk is None:
                    raise RuntimeError("this LIP layer's logit trunk is shared by its block: call the block, or "
                                       "pass the trunk's output as shared=")
                shared = self.trunk(x)
            return self.head(shared.to(x.dtype))
        groups = 1 if self.logit_conv == "full" else self.channels
        z = F.conv2d(x, self.logit_weight.to(x.dtype), padding=1, groups=groups)
        return COEFF * torch.sigmoid(_instance_norm(z, self.norm_weight, self.norm_bias))

    def pool(self, x, shared=None):
        dtype = compute_dtype(x.dtype)
        xc = x.to(dtype)
        if shared is not None:
            shared = shared.to(dtype)
        windows = unfold_windows(xc, self.kernel_size, self.stride, self.padding)
        return windows.fold(softmax_pool(windows, windows.unfold(self.logits(xc, shared)))).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, logit_conv={self.logit_conv}"
