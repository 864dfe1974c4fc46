"""Metrics and FLOP counting: pooling handles non-zero and consistent across counters, failures recorded."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from poolbench import flops, metrics, models, registry
from poolbench.base import Pool2d
from poolbench.measure.builtin_metrics import activation_bytes
from poolbench.measure.metric_subject import Subject
from poolbench.metrics import Quantity

#: fvcore traces with torch.jit, FlopCounterMode sees dispatched ops: dead code the tracer drops (a window count
#: a pooler computes but does not use) and size arithmetic can differ by a few percent, no more.
COUNTER_AGREEMENT = 0.03

needs_fvcore = pytest.mark.skipif(not flops.HAS_FVCORE, reason="fvcore is not installed (optional)")


def _tier(name: str) -> str:
    return "vectorized" if "vectorized" in registry.tiers(name) else registry.get_spec(name, None, "cpu").tier


def _pooler(name: str, channels: int, geometry) -> torch.nn.Module:
    tier = _tier(name)
    options = {"seed": 0} if registry.get_spec(name, tier).stochastic else {}
    return registry.create(name, channels, *geometry, tier=tier, **options)


@needs_fvcore
@pytest.mark.parametrize("geometry", [(2, 2, 0), (3, 2, 1)], ids=["k2s2", "k3s2p1"])
def test_pooling_handles_are_non_zero_and_agree_for_every_pooler(geometry):
    x = torch.rand(1, 8, 8, 8)
    for name in registry.names():
        counts = flops.count_layer(_pooler(name, 8, geometry), x)
        assert counts["fvcore"] > 0 and counts["flop_counter"] > 0 and counts["analytic"] > 0, (name, counts)
        assert counts["flop_counter"] == pytest.approx(counts["fvcore"], rel=COUNTER_AGREEMENT), (name, counts)
        # the op-level count is the definition plus the implementation's masking/bookkeeping, never far off
        assert 0.5 <= counts["flop_counter"] / counts["analytic"] <= 3.0, (name, counts)


@needs_fvcore
def test_every_fast_tier_is_priced_consistently():
    """Every (pooler, tier) that runs here: the C++/CUDA/Triton custom ops are priced by the formula."""
    x = torch.rand(1, 8, 8, 8)
    for spec in registry.specs():
        # reference: a float64 loop (checked elsewhere); compiled: counted on its eager tier
        if spec.tier in ("reference", "compiled") or spec.unavailable_reason("cpu"):
            continue
        options = {"seed": 0} if spec.stochastic else {}
        counts = flops.count_layer(registry.create(spec.name, 8, 2, 2, 0, tier=spec.tier, **options), x)
        label = f"{spec.name}[{spec.tier}]"
        assert counts["fvcore"] > 0 and counts["flop_counter"] > 0, (label, counts)
        assert counts["flop_counter"] == pytest.approx(counts["fvcore"], rel=COUNTER_AGREEMENT), (label, counts)
        if spec.tier in ("cpp", "cuda", "triton"):
            assert counts["flop_counter"] == counts["analytic"], (label, counts)


def test_max_and_avg_pool_counts_are_exact():
    x = torch.rand(2, 4, 8, 8)
    for name in ("max", "avg"):
        counts = flops.count_layer(_pooler(name, 4, (2, 2, 0)), x)
        expected = 4 * 2 * 4 * 4 * 4  # k² per output element
        assert counts["analytic"] == counts["flop_counter"] == expected
        if flops.HAS_FVCORE:
            assert counts["fvcore"] == expected


class _OpaquePool(Pool2d):
    """A pooler whose kernel is a custom op in a poolbench_ namespace (like the C++/CUDA/Triton tiers)."""

    pooler_name = "dpp_lite_sym"

    def pool(self, x):
        return torch.ops.poolbench_testing.opaque_pool(x, self.kernel_size, self.stride, self.padding)


class _FunctionPool(Pool2d):
    """A pooler whose kernel is a torch.autograd.Function (fvcore's tracer sees one prim::PythonOp)."""

    pooler_name = "dpp_lite_sym"

    class _Avg(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, k, s, p):
            return F.avg_pool2d(x, k, s, p)

        @staticmethod
        def backward(ctx, grad):  # pragma: no cover - not exercised
            raise NotImplementedError

    def pool(self, x):
        return self._Avg.apply(x, self.kernel_size, self.stride, self.padding)


@pytest.fixture(scope="module")
def opaque_op():
    if not hasattr(torch.ops.poolbench_testing, "opaque_pool"):
        @torch.library.custom_op("poolbench_testing::opaque_pool", mutates_args=())
        def opaque_pool(x: torch.Tensor, kernel_size: int, stride: int, padding: int) -> torch.Tensor:
            return F.avg_pool2d(x, kernel_size, stride, padding)

        @opaque_pool.register_fake
        def _(x, kernel_size, stride, padding):
            return F.avg_pool2d(x, kernel_size, stride, padding)
    return torch.ops.poolbench_testing.opaque_pool


def test_custom_op_kernels_are_priced_by_the_analytic_formula(opaque_op):
    x = torch.rand(1, 8, 8, 8)
    counts = flops.count_layer(_OpaquePool(8, 2, 2, 0), x)
    analytic = flops.analytic_macs("dpp_lite_sym", (1, 8, 8, 8), 2, 2, 0)
    assert counts["analytic"] == analytic and counts["flop_counter"] == analytic
    if flops.HAS_FVCORE:
        assert counts["fvcore"] == analytic


@needs_fvcore
def test_autograd_function_kernels_are_priced_in_fvcore():
    x = torch.rand(1, 8, 8, 8)
    fvcore = flops.fvcore_count(flops._Wrapped(_FunctionPool(8, 2, 2, 0)), x)
    assert fvcore.opaque_layers == ["pool"]
    assert fvcore.layers["pool"] == flops.analytic_macs("dpp_lite_sym", (1, 8, 8, 8), 2, 2, 0)


def test_compiled_tiers_are_counted_on_the_eager_tier():
    for name in registry.names():
        if "compiled" in registry.tiers(name):
            assert flops.counting_tier(name, "compiled") == "vectorized"
    assert flops.counting_tier("max", "vectorized") == "vectorized"


def test_analytic_macs_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape must be"):
        flops.analytic_macs("max", (8, 8), 2, 2, 0)


@needs_fvcore
def test_network_counts_agree_and_every_pooling_layer_is_priced():
    model = models.build("resnet50", "dpp_lite_sym", "vectorized").eval()
    counts = flops.count_network(model, torch.rand(1, 3, 32, 32))
    fvcore, counter = counts["fvcore"], counts["flop_counter"]
    sites = [site.name for site in models.pool_sites("resnet50")]
    assert list(fvcore.layers) == list(counter.layers) == sites
    for name in sites:
        assert fvcore.layers[name] > 0
        assert counter.layers[name] == pytest.approx(fvcore.layers[name], rel=1e-3)
    # FlopCounterMode sees adaptive_avg_pool2d (1×1 output) as a mean, which it does not price outside poolers
    assert counter.total == pytest.approx(fvcore.total, rel=1e-3)
    # elementwise work outside pooling layers (ReLU, residual adds) is not counted, as in the published figures
    baseline = flops.count_network(models.build_baseline("resnet50").eval(), torch.rand(1, 3, 32, 32))["fvcore"]
    assert set(baseline.by_category) <= {"standard", "pooling"}


# ----------------------------------------------------------------------------------------------
# metric registry and failure handling
# ----------------------------------------------------------------------------------------------

def _layer_subject(pooler="max", tier="torchvision") -> Subject:
    site = models.PoolSite("features.4", 8, 2, 2, 0, "vgg")
    return Subject("vgg16", pooler, tier, "layer", device="cpu", batch=2, resolution=8, sites=[site],
                   shape=(2, 8, 8, 8), layer="features.4", settings=metrics.Settings(warmup=0, min_run_time=0.01))


@pytest.fixture
def failing_metric():
    @metrics.metric("always_fails", scopes=("layer",), description="raises")
    def always_fails(subject):
        raise RuntimeError("kernel exploded")

    yield "always_fails"
    metrics.METRICS.pop("always_fails")


def test_a_failing_metric_becomes_an_error_row(failing_metric):
    rows = metrics.measure(_layer_subject(), failing_metric)
    assert len(rows) == 1 and rows[0].status == "error"
    assert rows[0].error == "RuntimeError: kernel exploded"
    assert rows[0].value is None


def test_cuda_only_metrics_are_skipped_with_a_reason_on_cpu():
    rows = metrics.measure(_layer_subject(), "memory_train")
    assert rows[0].status == "skipped" and "needs cuda" in rows[0].error


def test_metric_decorator_validates_scopes():
    with pytest.raises(ValueError, match="unknown scope"):
        metrics.metric("bad", scopes=("everything",))


def test_layer_metrics_produce_one_row_type():
    subject = _layer_subject("dpp_lite_sym", "vectorized")
    rows = [row for name in ("params", "latency_forward", "latency_train", "activation_memory", "macs")
            for row in metrics.measure(subject, name)]
    assert all(isinstance(row, metrics.MetricRow) and row.status == "ok" for row in rows), [r.error for r in rows]
    values = {row.quantity: row.value for row in rows}
    assert values["params"] == 16  # 2 per channel
    assert values["latency_forward"] > 0 and values["latency_train"] > 0
    assert values["activation_memory"] > 0
    assert values["macs_flop_counter"] > 0
    assert {row.shape for row in rows} == {"2x8x8x8"}


def test_network_params_metric_reports_overhead_vs_max_pool():
    subject = Subject("resnet50", "dpp_full_sym", "vectorized", "network", device="cpu", batch=1, resolution=32)
    with torch.device("meta"):  # parameters only: no memory, no initialisation time
        subject._module = models.build("resnet50", "dpp_full_sym", "vectorized")
    rows = {q.quantity: q.value for q in metrics.measure(subject, "params")}
    assert rows["params_overhead"] == 43_776
    assert rows["params_overhead_pct"] == pytest.approx(100 * 43_776 / 25_557_032)
    assert rows["params"] == 25_557_032 + 43_776


def test_activation_bytes_counts_activations_not_weights_and_leaks_nothing():
    """Guards against the pack hook returning the tensor: ReLU saves its output, a C++ reference cycle."""
    import gc
    import weakref

    module = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    x = torch.randn(4, 64)
    counted = activation_bytes(lambda: module(x), module)
    # saved: x (first linear), the ReLU output (for the second linear and for ReLU itself); weights left out
    assert counted == 2 * 4 * 64 * 4
    weight = weakref.ref(module[0].weight)
    del module
    gc.collect()
    assert weight() is None
