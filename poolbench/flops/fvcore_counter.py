"""fvcore's ``FlopCountAnalysis`` with poolbench's op handles (fvcore is optional)."""
from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Callable

import torch
from torch import nn

from .rules import (ADAPTIVE_POOLING_OPS, ELEMENTWISE_OPS, MOVEMENT_OPS, POOLING_OPS, REDUCTION_OPS, FlopCount,
                    combine_counts, eager_compiled, is_opaque, record_input_shapes, pooling_scopes)

try:  # fvcore is optional (the GPU machine lacks it)
    with warnings.catch_warnings():  # fvcore's focal loss uses torch.jit.script, deprecated in torch ≥ 2.10
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis
except ImportError:  # pragma: no cover - depends on the environment
    FlopCountAnalysis = None

HAS_FVCORE = FlopCountAnalysis is not None


# ----------------------------------------------------------------------------------------------
# fvcore
# ----------------------------------------------------------------------------------------------

def _jit_shape(value) -> list[int] | None:
    try:
        return value.type().sizes()
    except RuntimeError:
        return None


def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


def _jit_ints(value) -> list[int]:
    """An int or int-list argument of a traced op (a constant, or a ``prim::ListConstruct`` of constants)."""
    constant = value.toIValue()
    if constant is None and value.node().kind() == "prim::ListConstruct":
        constant = [item.toIValue() for item in value.node().inputs()]
    if isinstance(constant, (list, tuple)):
        return [int(v) for v in constant]
    return [int(constant)]


def _fv_matmul(inputs, outputs):
    # any ranks (fvcore's own handle rejects a 1-D right operand): one MAC per output element per inner index
    left = _jit_shape(inputs[0])
    return Counter({"standard:matmul": _numel(_jit_shape(outputs[0])) * (left[-1] if left else 0)})


def _fv_elementwise(op: str, cost: int):
    def handle(inputs, outputs):
        return Counter({f"elementwise:{op}": cost * _numel(_jit_shape(outputs[0]))})
    return handle


def _fv_reduction(op: str):
    def handle(inputs, outputs):
        # outputs that are not tensors (e.g. size arithmetic while tracing) cost nothing
        if _jit_shape(outputs[0]) is None:
            return Counter()
        return Counter({f"reduction:{op}": _numel(_jit_shape(inputs[0]))})
    return handle


def _fv_pooling(op: str):
    def handle(inputs, outputs):
        kernel = _jit_ints(inputs[1])
        taps = math.prod(kernel) if len(kernel) > 1 else kernel[0] ** 2
        return Counter({f"pooling:{op}": taps * _numel(_jit_shape(outputs[0]))})
    return handle


def _fv_adaptive(op: str):
    def handle(inputs, outputs):
        return Counter({f"pooling:{op}": _numel(_jit_shape(inputs[0]))})
    return handle


def _fv_free(inputs, outputs):
    return Counter()


def _fv_opaque(kind: str):
    def handle(inputs, outputs):
        # a marker: the pooling layer running it is priced analytically (Counter drops zeros, so 1)
        return Counter({f"opaque:{kind}": 1})
    return handle


class _Handles(dict):
    """fvcore's op-handle table, plus a fallback for opaque kernels whose names are not known in advance."""

    def __contains__(self, kind) -> bool:
        return dict.__contains__(self, kind) or is_opaque(kind)

    def __missing__(self, kind):
        if is_opaque(kind):
            return _fv_opaque(kind)
        raise KeyError(kind)


def _fvcore_handles() -> dict[str, Callable]:
    handles: dict[str, Callable] = {}
    for op, cost in ELEMENTWISE_OPS.items():
        handles[f"aten::{op}"] = handles[f"aten::{op}_"] = _fv_elementwise(op, cost)
    for op in REDUCTION_OPS:
        handles[f"aten::{op}"] = _fv_reduction(op)
    for op in POOLING_OPS:
        handles[f"aten::{op}"] = _fv_pooling(op)
    for op in ADAPTIVE_POOLING_OPS:
        handles[f"aten::{op}"] = _fv_adaptive(op)
    handles["aten::matmul"] = _fv_matmul
    for op in MOVEMENT_OPS:
        handles.setdefault(f"aten::{op}", _fv_free)
    return handles


def _fvcore_category(key: str) -> str:
    return key if ":" in key else f"standard:{key}"


def fvcore_count(model: nn.Module, inputs: torch.Tensor) -> FlopCount:
    """MACs of ``model(inputs)`` by fvcore's ``FlopCountAnalysis`` with poolbench's handles."""
    if FlopCountAnalysis is None:
        raise RuntimeError("fvcore is not installed (pip install fvcore); it is optional")
    scopes = pooling_scopes(model)
    shapes, hooks = record_input_shapes(scopes)
    try:
        analysis = FlopCountAnalysis(model, (inputs,))
        analysis._op_handles = _Handles(analysis._op_handles)  # opaque kernels by namespace / PythonOp
        analysis.set_op_handle(**_fvcore_handles())
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        with torch.no_grad(), eager_compiled():
            by_module = analysis.by_module_and_operator()
    finally:
        for hook in hooks:
            hook.remove()
    per_scope = {name: Counter({_fvcore_category(k): v for k, v in by_module.get(name, {}).items()}) for name in scopes}
    root = Counter({_fvcore_category(k): v for k, v in by_module[""].items()})
    uncounted: Counter = Counter()
    for name in scopes:
        uncounted.update(analysis.unsupported_ops(name))
    return combine_counts(per_scope, root, scopes, shapes, "fvcore", dict(uncounted))
