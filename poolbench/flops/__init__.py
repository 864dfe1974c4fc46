"""FLOPs of networks and pooling layers, counted two ways and checked against a formula.

Unit: multiply-accumulates (MACs), fvcore's convention (it calls them
"flops"), so the published 4.1 G / 7.8 G / 15.5 G of ResNet-50/101 and VGG-16
at 224² are the baseline rows.  ``torch.utils.flop_counter.FlopCounterMode``
counts a multiply-add as 2 FLOPs; its built-in formulas are halved here.

Why handles are needed: both counters know convolutions and matrix products
but count every pooling layer as 0 — fvcore ignores ``max_pool2d`` outright,
and a DPP layer is elementwise arithmetic, a reduction or a fused custom op,
none of which either counter prices.  So, in both counters alike:

* **pooling ops** (``max_pool2d``, ``avg_pool2d``, …) cost k² per output
  element, wherever they run;
* **elementwise ops** cost 1 per output element and **reductions** 1 per input
  element (softmax 5), counted *only inside pooling layers* — elsewhere
  (ReLU, residual adds) they stay uncounted, as in the published figures;
* **opaque kernels** — custom ops in a ``poolbench_*`` namespace (the C++,
  CUDA and Triton tiers) and ``torch.autograd.Function``\\ s, which fvcore's
  tracer sees as one ``prim::PythonOp`` — cannot be looked into, so a pooling
  layer that runs one is priced by the pooler's analytic formula
  (:func:`analytic_macs`, the formula each pooler registers with ``macs=``);
* convolutions, linear layers and batch norm follow fvcore's conventions
  (batch norm gets a matching formula in FlopCounterMode).

:func:`analytic_macs` writes each pooler's arithmetic from its definition
(the papers' formulas): the op-level counts of the plain-PyTorch tiers may exceed it by the
masking and bookkeeping those implementations add, and the report shows the
ratio.  fvcore is optional: without it the fvcore columns are ``None``.

The pieces: :mod:`.rules` (op tables, scopes, the registered formulas),
:mod:`.fvcore_counter` and :mod:`.torch_counter` (one adapter per counter);
this module runs both on a network or one layer.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import registry
from .fvcore_counter import HAS_FVCORE, fvcore_count
from .rules import (ELEMENTWISE_OPS, OPAQUE_NAMESPACES, POOLING_OPS, REDUCTION_OPS, FlopCount, analytic_macs,
                    has_analytic_formula, layer_analytic_macs, opaque_namespaces, pooling_scopes)
from .torch_counter import flop_counter_count

__all__ = [
    "ELEMENTWISE_OPS",
    "FlopCount",
    "HAS_FVCORE",
    "OPAQUE_NAMESPACES",
    "POOLING_OPS",
    "REDUCTION_OPS",
    "analytic_macs",
    "count_layer",
    "count_network",
    "counting_tier",
    "fvcore_count",
    "flop_counter_count",
    "has_analytic_formula",
    "layer_analytic_macs",
    "opaque_namespaces",
    "pooling_scopes",
]


#: Tiers neither counter can trace into (``torch.jit.trace`` refuses Dynamo-compiled code, and compiled
#: graphs hide their ops) are counted on the eager tier they compile: the arithmetic is the same.
COUNTED_AS = {"compiled": "vectorized"}


def counting_tier(pooler: str, tier: str) -> str:
    """The tier whose modules are traced to count ``pooler[tier]``'s FLOPs."""
    substitute = COUNTED_AS.get(tier)
    return substitute if substitute is not None and substitute in registry.tiers(pooler) else tier


# ----------------------------------------------------------------------------------------------
# one network / one layer, both counters and the formula
# ----------------------------------------------------------------------------------------------

def count_network(model: nn.Module, inputs: torch.Tensor) -> dict[str, FlopCount | None]:
    """Both counters on ``model(inputs)`` (eval mode); ``fvcore`` is ``None`` when fvcore is absent."""
    was_training = model.training
    model.eval()
    try:
        result: dict[str, FlopCount | None] = {"flop_counter": flop_counter_count(model, inputs)}
        result["fvcore"] = fvcore_count(model, inputs) if HAS_FVCORE else None
    finally:
        model.train(was_training)
    return result


class _Wrapped(nn.Module):
    """A one-layer model, so the pooler has a qualified name (``pool``) in both counters."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        return self.pool(x)


def count_layer(pool: nn.Module, inputs: torch.Tensor) -> dict[str, int | None]:
    """MACs of one pooling layer on ``inputs``: ``analytic``, ``flop_counter``, ``fvcore`` (``None`` if absent)."""
    wrapped = _Wrapped(pool)
    counts = count_network(wrapped, inputs)
    fvcore = counts["fvcore"]
    return {
        "analytic": layer_analytic_macs(pool, tuple(inputs.shape)),
        "flop_counter": counts["flop_counter"].layers["pool"],
        "fvcore": fvcore.layers["pool"] if fvcore is not None else None,
    }
