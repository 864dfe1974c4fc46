"""The pooling-layer input shapes the per-layer benchmarks run at, read off the networks themselves.

Every shape comes from :func:`poolbench.models.layer_input_shapes` (a
meta-device forward of the registered network with max pooling at each
site), so a network registered with :func:`poolbench.models.register_model`
gets per-layer benchmarks without a hand-kept shape table, and the tables
cannot drift from the placement the network benchmarks use.
"""
from __future__ import annotations

import functools

from .. import models

__all__ = ["pool_layer_models", "pool_layers", "vgg16_pool_shapes"]

Shape = tuple[int, ...]
Window = tuple[int, int, int]


def pool_layer_models() -> list[str]:
    """Networks whose pooling layers can be benchmarked one by one: every registered network."""
    return models.names()


@functools.lru_cache(maxsize=64)
def _distinct_layers(spec: models.ModelSpec, batch: int, resolution: int) -> tuple[tuple[Shape, Window], ...]:
    # keyed by the spec, not its name: a network registered again under the same name gets its own shapes
    layers = ((shape, site.geometry) for site, shape in models.layer_input_shapes(spec.name, batch, resolution))
    return tuple(dict.fromkeys(layers))  # forward order, each (shape, window) once


def pool_layers(model: str = "vgg16", batch: int = 32, resolution: int = 224) -> list[tuple[Shape, Window]]:
    """[(input shape (N, C, H, W), (kernel_size, stride, padding))] of each distinct pooling layer of ``model``.

    Distinct: a ResNet block's main path and shortcut pool the same input with
    the same window, which is one layer to benchmark, not two.
    """
    known = pool_layer_models()
    if model not in known:
        raise ValueError(f"unknown model {model!r}; per-layer shapes are known for {', '.join(known)}")
    return list(_distinct_layers(models.MODELS[model], batch, resolution))


def vgg16_pool_shapes(batch: int = 32, resolution: int = 224) -> list[Shape]:
    """(N, C, H, W) at the input of each of VGG-16's five pooling layers for a ``resolution``² image."""
    return [shape for shape, _ in pool_layers("vgg16", batch, resolution)]
