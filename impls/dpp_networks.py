"""DPP's own network: visinf/dpp's ResNet-50/101 (``models/resnetdpp.lua``), declared for every DPP variant.

The DPP variants register once per tier (:func:`poolbench.dpp.register_dpp_tier`); the network their
authors built belongs to the variants, not to a tier, so it is declared here, once: the stem keeps its max
pool and each stride-2 block pools its output (see :mod:`poolbench.models.authors`).  The authors' code has
no VGG: DPP has no VGG-16 of its authors.
"""
from __future__ import annotations

from poolbench.dpp import DPP_VARIANTS
from poolbench.models.authors import swap_authors_resnet
from poolbench.registry import PoolerNetwork, register_network

AUTHORS_RESNET = PoolerNetwork(swap_authors_resnet, "visinf/dpp models/resnetdpp.lua",
                               note="one pooler per stride-2 block, on its output; the authors' own layer there "
                                    "is AverageDownSample (poolbench.dpp.build_authors_resnet)")

for _variant in DPP_VARIANTS:
    for _network in ("resnet50@authors", "resnet101@authors"):
        register_network(_variant.name, _network, AUTHORS_RESNET)
