"""The pooling-layer input shapes the benchmarks are run at.

VGG-16 pools five times (the per-layer targets are set at batch 32, 224²); the
per-layer benchmarks use the same shapes at a batch that fits the device.
"""
from __future__ import annotations

__all__ = ["VGG16_POOL_CHANNELS", "vgg16_pool_shapes"]

#: Channels entering VGG-16's five MaxPool2d(2, 2) layers.
VGG16_POOL_CHANNELS = (64, 128, 256, 512, 512)


def vgg16_pool_shapes(batch: int = 32, resolution: int = 224) -> list[tuple[int, int, int, int]]:
    """(N, C, H, W) at the input of each VGG-16 pooling layer for a ``resolution``² image."""
    shapes, size = [], resolution
    for channels in VGG16_POOL_CHANNELS:
        shapes.append((batch, channels, size, size))
        size //= 2
    return shapes
