"""The pooling-layer input shapes the benchmarks are run at.

VGG-16 pools five times (the per-layer targets are set at batch 32, 224²); the
per-layer benchmarks use the same shapes at a batch that fits the device.
"""
from __future__ import annotations

__all__ = ["POOL_LAYER_MODELS", "RESNET50_POOL_LAYERS", "VGG16_POOL_CHANNELS", "pool_layers", "vgg16_pool_shapes"]

#: Channels entering VGG-16's five MaxPool2d(2, 2) layers.
VGG16_POOL_CHANNELS = (64, 128, 256, 512, 512)


def vgg16_pool_shapes(batch: int = 32, resolution: int = 224) -> list[tuple[int, int, int, int]]:
    """(N, C, H, W) at the input of each VGG-16 pooling layer for a ``resolution``² image."""
    shapes, size = [], resolution
    for channels in VGG16_POOL_CHANNELS:
        shapes.append((batch, channels, size, size))
        size //= 2
    return shapes


#: ResNet-50's distinct pooling layers at the paper's placement, for a 224² image:
#: (channels, size, kernel_size, stride, padding).  The stem's 3×3/2 pad 1 max pool, then the
#: 2×2/2 pooler on the input of the first block of layer2-4 (main path and shortcut see the same
#: shape, so each shape is listed once).
RESNET50_POOL_LAYERS = ((64, 112, 3, 2, 1), (256, 56, 2, 2, 0), (512, 28, 2, 2, 0), (1024, 14, 2, 2, 0))

#: Networks whose pooling layers the per-layer benchmark knows.
POOL_LAYER_MODELS = ("vgg16", "resnet50")


def pool_layers(model: str = "vgg16", batch: int = 32, resolution: int = 224):
    """[(shape (N, C, H, W), (kernel_size, stride, padding))] of each distinct pooling layer of ``model``."""
    if model == "vgg16":
        return [(shape, (2, 2, 0)) for shape in vgg16_pool_shapes(batch, resolution)]
    if model == "resnet50":
        return [((batch, channels, size * resolution // 224, size * resolution // 224), (k, s, p))
                for channels, size, k, s, p in RESNET50_POOL_LAYERS]
    raise ValueError(f"unknown model {model!r}; per-layer shapes are known for {', '.join(POOL_LAYER_MODELS)}")
