"""``torch.utils.flop_counter.FlopCounterMode`` with poolbench's formulas (torch counts a multiply-add as 2)."""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable

import torch
from torch import nn

from .rules import (ADAPTIVE_POOLING_OPS, BATCH_NORM_OPS, ELEMENTWISE_OPS, POOLING_OPS, REDUCTION_OPS, FlopCount,
                    combine_counts, eager_compiled, record_input_shapes, opaque_namespaces, pooling_scopes)

# ----------------------------------------------------------------------------------------------
# torch.utils.flop_counter.FlopCounterMode
# ----------------------------------------------------------------------------------------------

def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            if (found := _first_tensor(item)) is not None:
                return found
    return None


def _raw(formula):
    formula._get_raw = True
    return formula


def _fc_elementwise(cost: int):
    @_raw
    def formula(*args, out_val=None, **kwargs) -> int:
        out = _first_tensor(out_val)
        return cost * (out.numel() if out is not None else 0)
    return formula


@_raw
def _fc_reduction(*args, out_val=None, **kwargs) -> int:
    source = _first_tensor(args[:1])
    return source.numel() if source is not None else 0


@_raw
def _fc_pooling(*args, out_val=None, **kwargs) -> int:
    kernel = args[1] if len(args) > 1 else kwargs["kernel_size"]
    kernel = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel]
    taps = math.prod(kernel) if len(kernel) > 1 else kernel[0] ** 2
    return taps * _first_tensor(out_val).numel()


@_raw
def _fc_adaptive(*args, out_val=None, **kwargs) -> int:
    return args[0].numel()


@_raw
def _fc_batch_norm(*args, out_val=None, **kwargs) -> int:
    # fvcore's eval-mode rule: one op per element, two with an affine transform
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    return args[0].numel() * (2 if weight is not None else 1)


@_raw
def _fc_vector_product(*args, out_val=None, **kwargs) -> int:
    # mv / dot (a matmul with a 1-D operand): one MAC per output element per inner index
    return max(_first_tensor(out_val).numel(), 1) * args[0].shape[-1]


@_raw
def _fc_opaque(*args, out_val=None, **kwargs) -> int:
    return 1


def _packet(namespace, name: str):
    try:
        return getattr(namespace, name)
    except (AttributeError, RuntimeError):
        return None


def _flop_counter_mapping() -> dict[Any, tuple[str, Callable]]:
    """OpOverloadPacket -> (category, formula) for every op poolbench prices."""
    aten = torch.ops.aten
    mapping: dict[Any, tuple[str, Callable]] = {}

    def add(name: str, category: str, formula: Callable, namespace=aten) -> None:
        if (packet := _packet(namespace, name)) is not None:
            mapping[packet] = (category, formula)

    for op, cost in ELEMENTWISE_OPS.items():
        add(op, "elementwise", _fc_elementwise(cost))
        add(f"{op}_", "elementwise", _fc_elementwise(cost))
    for op in REDUCTION_OPS:
        add(op, "reduction", _fc_reduction)
    for op in POOLING_OPS:
        add(op, "pooling", _fc_pooling)
    for op in ADAPTIVE_POOLING_OPS:
        add(op, "pooling", _fc_adaptive)
    for op in BATCH_NORM_OPS:
        add(op, "standard", _fc_batch_norm)
    for op in ("mv", "dot", "vdot"):
        add(op, "standard", _fc_vector_product)
    return mapping


def _is_opaque_packet(op) -> bool:
    # str(OpOverloadPacket) is "namespace.name", str(OpOverload) "namespace.name.overload"
    return isinstance(op, (torch._ops.OpOverloadPacket, torch._ops.OpOverload)) and str(op).startswith(opaque_namespaces())


class _Formulas(dict):
    """FlopCounterMode's formula table, plus opaque custom ops recognised by namespace when they first run.

    (A tier's library may register its ops lazily, during the very forward
    being counted, so they cannot be listed beforehand.)
    """

    def __contains__(self, op) -> bool:
        return dict.__contains__(self, op) or _is_opaque_packet(op)

    def __missing__(self, op):
        if _is_opaque_packet(op):
            return _fc_opaque
        raise KeyError(op)


def flop_counter_count(model: nn.Module, inputs: torch.Tensor) -> FlopCount:
    """MACs of ``model(inputs)`` by ``torch.utils.flop_counter.FlopCounterMode`` with poolbench's formulas."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = _flop_counter_mapping()
    scopes = pooling_scopes(model)
    shapes, hooks = record_input_shapes(scopes)
    mode = FlopCounterMode(display=False, custom_mapping={packet: formula for packet, (_, formula) in mapping.items()})
    mode.flop_registry = _Formulas(mode.flop_registry)
    try:
        with torch.no_grad(), eager_compiled(), mode:
            model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    counts = mode.get_flop_counts()
    prefix = type(model).__name__

    def categorised(ops: dict) -> Counter:
        out: Counter = Counter()
        for packet, value in ops.items():
            if packet in mapping:
                out[f"{mapping[packet][0]}:{packet}"] += value
            elif _is_opaque_packet(packet):
                out[f"opaque:{packet}"] += value
            else:  # torch's own formulas count a multiply-add as 2 FLOPs
                out[f"standard:{packet}"] += value // 2
        return out

    per_scope = {name: categorised(counts.get(f"{prefix}.{name}", {})) for name in scopes}
    root = categorised(counts.get("Global", {}))
    return combine_counts(per_scope, root, scopes, shapes, "FlopCounterMode", {})
