"""The paper's placement in torchvision's VGG-16 and ResNets (see :mod:`poolbench.models` for why there)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .sites import PoolSite, pooled, tag

__all__ = ["strided_convs", "swap_resnet", "swap_vgg"]


def swap_vgg(model: nn.Module, make: Callable[[PoolSite], nn.Module]) -> list[PoolSite]:
    sites, channels = [], None
    for index, layer in enumerate(model.features):
        if isinstance(layer, nn.Conv2d):
            channels = layer.out_channels
        elif isinstance(layer, nn.MaxPool2d):
            site = PoolSite(f"features.{index}", channels, 2, 2, 0, "vgg")
            model.features[index] = tag(make(site), site)
            sites.append(site)
    return sites


def strided_convs(block: nn.Module) -> list[nn.Conv2d]:
    main = [getattr(block, name) for name in ("conv1", "conv2", "conv3") if hasattr(block, name)]
    return [conv for conv in main if isinstance(conv, nn.Conv2d) and conv.stride != (1, 1)]


def swap_resnet(model: nn.Module, make: Callable[[PoolSite], nn.Module]) -> list[PoolSite]:
    stem = PoolSite("maxpool", model.conv1.out_channels, 3, 2, 1, "stem")
    model.maxpool = tag(make(stem), stem)
    sites = [stem]
    for layer_name in ("layer1", "layer2", "layer3", "layer4"):
        for block_index, block in enumerate(getattr(model, layer_name)):
            strided = strided_convs(block)
            if not strided:
                continue
            for conv in strided:
                if conv.stride != (2, 2):
                    raise ValueError(f"{layer_name}.{block_index} has stride {conv.stride}; only stride 2 is swapped")
                conv.stride = (1, 1)
            prefix = f"{layer_name}.{block_index}"
            main = PoolSite(f"{prefix}.conv1.pool", block.conv1.in_channels, 2, 2, 0, "main")
            block.conv1 = pooled(tag(make(main), main), block.conv1)
            sites.append(main)
            shortcut_conv = block.downsample[0] if block.downsample is not None else None
            if shortcut_conv is not None and shortcut_conv.stride == (2, 2):
                shortcut_conv.stride = (1, 1)
                shortcut = PoolSite(f"{prefix}.downsample.0.pool", shortcut_conv.in_channels, 2, 2, 0, "shortcut")
                block.downsample[0] = pooled(tag(make(shortcut), shortcut), shortcut_conv)
                sites.append(shortcut)
    return sites
