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
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .macs import PoolGeometry

try:  # fvcore is optional (the GPU machine lacks it)
    with warnings.catch_warnings():  # fvcore's focal loss uses torch.jit.script, deprecated in torch ≥ 2.10
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis
except ImportError:  # pragma: no cover - depends on the environment
    FlopCountAnalysis = None

__all__ = [
    "ELEMENTWISE_OPS",
    "FlopCount",
    "HAS_FVCORE",
    "POOLING_OPS",
    "REDUCTION_OPS",
    "analytic_macs",
    "count_layer",
    "count_network",
    "counting_tier",
    "fvcore_count",
    "flop_counter_count",
    "pooling_scopes",
]

HAS_FVCORE = FlopCountAnalysis is not None

#: Namespaces of custom ops whose kernels the counters cannot see into: poolbench's own prefix,
#: plus whatever a registered tier declares (``op_namespaces=``), see :func:`opaque_namespaces`.
OPAQUE_NAMESPACES = ("poolbench_",)


def opaque_namespaces() -> tuple[str, ...]:
    """Every custom-op namespace prefix a FLOP counter must treat as one opaque kernel."""
    from .registry import specs

    return tuple(dict.fromkeys((*OPAQUE_NAMESPACES, *(ns for spec in specs() for ns in spec.op_namespaces))))

#: Elementwise ops: cost per output element (1 unless listed otherwise).
ELEMENTWISE_OPS: dict[str, int] = {
    **{name: 1 for name in (
        "add", "sub", "rsub", "mul", "div", "neg", "abs", "exp", "exp2", "expm1", "log", "log1p", "log2", "pow",
        "square", "sqrt", "rsqrt", "reciprocal", "sigmoid", "tanh", "relu", "gelu", "silu", "softplus", "elu",
        "leaky_relu", "hardtanh", "maximum", "minimum", "fmax", "fmin", "clamp", "clamp_min", "clamp_max", "where",
        "masked_fill", "lerp", "addcmul", "addcdiv", "sign", "erf", "floor", "ceil", "round", "trunc", "frac",
        "gt", "lt", "ge", "le", "eq", "ne", "logical_and", "logical_or", "logical_not", "bitwise_not",
        "bitwise_and", "bitwise_or", "remainder", "fmod", "true_divide", "threshold",
    )},
    # softmax = max, subtract, exp, sum, divide per element
    "softmax": 5, "_softmax": 5, "log_softmax": 5, "_log_softmax": 5,
}
#: Reductions: cost per input element.
REDUCTION_OPS = frozenset({
    "sum", "mean", "amax", "amin", "max", "min", "prod", "var", "std", "var_mean", "std_mean", "norm",
    "linalg_vector_norm", "logsumexp", "cumsum", "cumprod", "argmax", "argmin", "any", "all", "nansum",
})
#: Pooling ops: cost k² per output element (adaptive pools: 1 per input element, as fvcore).
POOLING_OPS = frozenset({
    "max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "max_pool1d", "avg_pool1d", "max_pool3d",
    "max_pool3d_with_indices", "avg_pool3d", "fractional_max_pool2d", "lp_pool2d",
})
ADAPTIVE_POOLING_OPS = frozenset({
    "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool1d",
})
#: Data movement and construction: known to cost nothing (listed so they are not reported as uncounted).
MOVEMENT_OPS = frozenset({
    "view", "reshape", "_unsafe_view", "_to_copy", "to", "type_as", "copy_", "contiguous", "clone", "detach", "alias",
    "expand", "expand_as", "permute", "transpose", "t", "squeeze", "unsqueeze", "flatten", "unflatten", "im2col",
    "col2im", "unfold", "cat", "stack", "index_select", "gather", "index", "slice", "select", "narrow", "split",
    "chunk", "new_ones", "new_zeros", "new_empty", "new_full", "ones_like", "zeros_like", "empty_like", "full_like",
    "ones", "zeros", "empty", "full", "arange", "scalar_tensor", "lift_fresh", "reflection_pad2d",
    "replication_pad2d", "constant_pad_nd", "pad", "randperm", "rand", "randn", "rand_like", "randn_like", "sort",
    "fill_", "zero_", "as_strided", "repeat", "tile", "roll", "flip", "Int", "size", "numpy_T", "dropout",
})
#: Batch norm variants (FlopCounterMode sees the backend op; fvcore sees ``aten::batch_norm``).
BATCH_NORM_OPS = frozenset({
    "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm", "cudnn_batch_norm",
    "miopen_batch_norm", "_batch_norm_with_update", "_batch_norm_no_update",
})

#: Which counts are kept only inside pooling layers.
SCOPED_CATEGORIES = ("elementwise", "reduction")


@dataclass
class FlopCount:
    """MACs of one network (or one layer) from one counter.

    ``total`` follows the rules in the module docstring; ``layers`` maps each
    pooling layer's qualified name to its MACs; ``opaque_layers`` names the
    layers priced analytically; ``uncounted`` lists ops seen inside pooling
    layers that no rule prices (fvcore only: it reports them).
    """

    counter: str
    total: int
    layers: dict[str, int] = field(default_factory=dict)
    by_category: dict[str, int] = field(default_factory=dict)
    opaque_layers: list[str] = field(default_factory=list)
    uncounted: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# analytic counts: each pooler declares its formula when it registers (``@register(macs=...)``)
# ----------------------------------------------------------------------------------------------

def analytic_macs(pooler: str, shape: tuple[int, int, int, int], kernel_size: int, stride: int, padding: int,
                  tier: str | None = None, **options) -> int | None:
    """MACs of ``pooler`` on an input of ``shape`` (N, C, H, W), from the formula it registered.

    ``None`` when the pooler declares no formula (only its module's ops can be counted then).
    """
    from .registry import get_spec

    if len(shape) != 4:
        raise ValueError(f"shape must be (N, C, H, W), got {tuple(shape)}")
    formula = get_spec(pooler, tier).macs
    if formula is None:
        return None
    geometry = PoolGeometry(*map(int, shape), int(kernel_size), int(stride), int(padding))
    return int(formula(geometry, options))


def has_analytic_formula(pooler: str) -> bool:
    from .registry import get_spec

    return get_spec(pooler).macs is not None


# ----------------------------------------------------------------------------------------------
# which modules are pooling layers
# ----------------------------------------------------------------------------------------------

_TORCH_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d, nn.FractionalMaxPool2d)


def pooling_scopes(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> module of every pooling layer: swapped-in poolers and torch's own pooling modules."""
    from .base import Pool2d
    from .models import SITE_ATTRIBUTE

    scopes = {}
    for name, module in model.named_modules():
        if hasattr(module, SITE_ATTRIBUTE) or isinstance(module, (Pool2d, *_TORCH_POOLS)):
            if not any(name.startswith(outer + ".") for outer in scopes):
                scopes[name] = module
    return scopes


def layer_analytic_macs(module: nn.Module, shape: tuple[int, ...]) -> int | None:
    """The registered formula for a pooling module (built by ``poolbench.create``) on an input of ``shape``."""
    name = getattr(module, "pooler_name", None)
    if name is None:  # torch's own pooling modules
        name = "avg" if isinstance(module, nn.AvgPool2d) else "max"
    k, s, p = (getattr(module, attr) for attr in ("kernel_size", "stride", "padding"))
    k, s, p = (v[0] if isinstance(v, (tuple, list)) else v for v in (k, s, p))
    return analytic_macs(name, shape, k, s, p, tier=getattr(module, "tier", None),
                         **getattr(module, "pooler_options", {}))


def _record_input_shapes(scopes: dict[str, nn.Module]):
    shapes: dict[str, tuple[int, ...]] = {}

    def hook_for(name: str):
        def hook(module, args) -> None:  # returning anything would replace the layer's input
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in scopes.items()]
    return shapes, handles


@contextlib.contextmanager
def _eager_compiled():
    """Run ``torch.compile``\\ d tiers eagerly: neither tracer can count through Dynamo; the maths is the same."""
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield


def _is_opaque(op_name: str) -> bool:
    return op_name.startswith(opaque_namespaces()) or op_name.startswith("prim::PythonOp")


def _combine(per_scope: dict[str, Counter], root: Counter, scopes: dict[str, nn.Module],
             shapes: dict[str, tuple[int, ...]], counter: str, uncounted: dict[str, int]) -> FlopCount:
    """Apply the scoping rules: elementwise/reductions count only inside pooling layers; opaque layers analytic."""
    layers, opaque = {}, []
    by_category: Counter = Counter()
    for key, value in root.items():
        category = key.split(":", 1)[0]
        if category not in SCOPED_CATEGORIES and category != "opaque":
            by_category[category] += value
    for name, module in scopes.items():
        counts = per_scope.get(name, Counter())
        if any(key.startswith("opaque:") for key in counts):
            if name not in shapes:
                raise RuntimeError(f"pooling layer {name} ran an opaque kernel but its input shape was not recorded")
            formula = layer_analytic_macs(module, shapes[name])
            if formula is None:
                raise ValueError(f"pooling layer {name} ({getattr(module, 'pooler_name', type(module).__name__)}) runs "
                                 "a fused kernel the counters cannot see into and its pooler declares no MAC formula: "
                                 "pass macs= to @register")
            layers[name] = formula
            opaque.append(name)
            # the formula replaces everything else counted in this layer (e.g. a guide conv)
            for key, value in counts.items():
                category = key.split(":", 1)[0]
                if category not in (*SCOPED_CATEGORIES, "opaque"):
                    by_category[category] -= value
            by_category["opaque"] += layers[name]
        else:
            layers[name] = int(sum(v for k, v in counts.items()))
            for key, value in counts.items():
                category = key.split(":", 1)[0]
                if category in SCOPED_CATEGORIES:
                    by_category[category] += value
    total = sum(by_category.values())
    return FlopCount(counter, int(total), layers, {k: int(v) for k, v in by_category.items()}, opaque, uncounted)


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
        return dict.__contains__(self, kind) or _is_opaque(kind)

    def __missing__(self, kind):
        if _is_opaque(kind):
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
    shapes, hooks = _record_input_shapes(scopes)
    try:
        analysis = FlopCountAnalysis(model, (inputs,))
        analysis._op_handles = _Handles(analysis._op_handles)  # opaque kernels by namespace / PythonOp
        analysis.set_op_handle(**_fvcore_handles())
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        with torch.no_grad(), _eager_compiled():
            by_module = analysis.by_module_and_operator()
    finally:
        for hook in hooks:
            hook.remove()
    per_scope = {name: Counter({_fvcore_category(k): v for k, v in by_module.get(name, {}).items()}) for name in scopes}
    root = Counter({_fvcore_category(k): v for k, v in by_module[""].items()})
    uncounted: Counter = Counter()
    for name in scopes:
        uncounted.update(analysis.unsupported_ops(name))
    return _combine(per_scope, root, scopes, shapes, "fvcore", dict(uncounted))


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
    shapes, hooks = _record_input_shapes(scopes)
    mode = FlopCounterMode(display=False, custom_mapping={packet: formula for packet, (_, formula) in mapping.items()})
    mode.flop_registry = _Formulas(mode.flop_registry)
    try:
        with torch.no_grad(), _eager_compiled(), mode:
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
    return _combine(per_scope, root, scopes, shapes, "FlopCounterMode", {})


#: Tiers neither counter can trace into (``torch.jit.trace`` refuses Dynamo-compiled code, and compiled
#: graphs hide their ops) are counted on the eager tier they compile: the arithmetic is the same.
COUNTED_AS = {"compiled": "vectorized"}


def counting_tier(pooler: str, tier: str) -> str:
    """The tier whose modules are traced to count ``pooler[tier]``'s FLOPs."""
    from . import registry

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
