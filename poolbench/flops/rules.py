"""The counting rules both FLOP counters share: op tables, pooling scopes, opaque kernels, the formula.

See :mod:`poolbench.flops` for the conventions (MACs; pooling ops k² per
output; elementwise ops and reductions only inside pooling layers; opaque
kernels priced by the pooler's registered formula).
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import registry
from ..base import Pool2d
from ..macs import PoolGeometry
from ..models import SITE_ATTRIBUTE


#: Namespaces of custom ops whose kernels the counters cannot see into: poolbench's own prefix,
#: plus whatever a registered tier declares (``op_namespaces=``), see :func:`opaque_namespaces`.
OPAQUE_NAMESPACES = ("poolbench_",)


def opaque_namespaces() -> tuple[str, ...]:
    """Every custom-op namespace prefix a FLOP counter must treat as one opaque kernel."""
    return tuple(dict.fromkeys((*OPAQUE_NAMESPACES, *(ns for spec in registry.specs() for ns in spec.op_namespaces))))

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
    if len(shape) != 4:
        raise ValueError(f"shape must be (N, C, H, W), got {tuple(shape)}")
    formula = registry.get_spec(pooler, tier).macs
    if formula is None:
        return None
    geometry = PoolGeometry(*map(int, shape), int(kernel_size), int(stride), int(padding))
    return int(formula(geometry, options))


def has_analytic_formula(pooler: str) -> bool:
    return registry.get_spec(pooler).macs is not None


# ----------------------------------------------------------------------------------------------
# which modules are pooling layers
# ----------------------------------------------------------------------------------------------

_TORCH_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d, nn.FractionalMaxPool2d)


def pooling_scopes(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> module of every pooling layer: swapped-in poolers and torch's own pooling modules."""
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


def record_input_shapes(scopes: dict[str, nn.Module]):
    shapes: dict[str, tuple[int, ...]] = {}

    def hook_for(name: str):
        def hook(module, args) -> None:  # returning anything would replace the layer's input
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in scopes.items()]
    return shapes, handles


@contextlib.contextmanager
def eager_compiled():
    """Run ``torch.compile``\\ d tiers eagerly: neither tracer can count through Dynamo; the maths is the same."""
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield


def is_opaque(op_name: str) -> bool:
    return op_name.startswith(opaque_namespaces()) or op_name.startswith("prim::PythonOp")


def combine_counts(per_scope: dict[str, Counter], root: Counter, scopes: dict[str, nn.Module],
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
