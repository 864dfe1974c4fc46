"""The cpp tier's host path: ops dispatched per call, validation cached per key, the functional form at λ = 0.

Ops are counted with a ``TorchDispatchMode`` (scripts/host_cost.py, which also times the
host cost against ``nn.MaxPool2d``): an inference call must be exactly the fused op; a
train step may add only autograd plumbing around the fused forward and backward ops
(no ``exp`` of the stored logs, no chain-rule ``mul``).
"""
from __future__ import annotations

import copy
import importlib.util
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import poolbench
from poolbench import functional as PF
from poolbench.tolerances import assert_close
from poolbench.impls.dpp_ext import ops

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("host_cost", ROOT / "scripts" / "host_cost.py")
host_cost = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(host_cost)

#: What a train step (forward, .sum().backward()) may dispatch besides the fused ops: the loss's
#: sum and its backward (ones_like, expand) and gradient accumulation into leaves (detach).
PLUMBING = {"aten::sum", "aten::ones_like", "aten::expand", "aten::detach"}
FUSED = {"poolbench_dpp::dpp_forward", "poolbench_dpp::dpp_backward"}


@pytest.fixture(autouse=True)
def _cpp_ready():
    reason = ops.cpu_unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("name", ["dpp_lite_sym", "dpp_lite_asym", "dpp_full_sym", "dpp_full_asym"])
def test_inference_call_dispatches_exactly_the_fused_op(name):
    """Guards against: exp(θα), exp(θλ) launched around the kernel on every call (3 ops, 3 launches)."""
    module = poolbench.create(name, 64, 2, 2, 0, tier="cpp")
    assert host_cost.count_ops(module, torch.randn(1, 64, 4, 4)) == ["poolbench_dpp::dpp_forward"]


@pytest.mark.parametrize("name", ["dpp_lite_sym", "dpp_full_asym"])
def test_train_step_dispatches_no_op_outside_the_tier_but_plumbing(name):
    """Guards against: chain-rule muls (∂θ = α·∂α) and exps around the fused backward (13-15 ops)."""
    module = poolbench.create(name, 64, 2, 2, 0, tier="cpp")
    found = host_cost.count_ops(module, torch.randn(1, 64, 4, 4, requires_grad=True), train=True)
    assert set(found) <= FUSED | PLUMBING, set(found) - FUSED - PLUMBING
    assert found.count("poolbench_dpp::dpp_forward") == 1 and found.count("poolbench_dpp::dpp_backward") == 1


def test_bound_call_still_reaches_the_dispatcher_where_the_profiler_sees_it():
    """The validated call runs the op's C++ dispatch handle, skipping ``OpOverload.__call__``'s Python frame;
    guards against a shortcut that skipped the dispatcher too (the profiler and dispatch modes hook there)."""
    module = poolbench.create("dpp_full_sym", 64, 2, 2, 0, tier="cpp")
    x = torch.randn(1, 64, 4, 4)
    with torch.no_grad():
        module(x)  # validated: the next call takes the bound path
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            module(x)
    assert "poolbench_dpp::dpp_forward" in {event.name for event in profile.events()}


def test_direct_call_is_the_overloads_handle_or_the_overload_itself():
    from poolbench.dpp_custom_op import _direct_call

    op = torch.ops.poolbench_dpp.dpp_forward.default
    assert _direct_call(op) is op._op

    class WithoutHandle:
        def __call__(self, *args):
            return args

    other = WithoutHandle()
    assert _direct_call(other) is other


def test_module_gradients_are_wrt_the_stored_logs():
    """The fused op returns ∂L/∂θ for the stored θα = ln α, θλ = ln λ: equal to the vectorized tier's."""
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    results = []
    for tier in ("cpp", "vectorized"):
        module = poolbench.create("dpp_full_asym", 3, 3, 2, 1, tier=tier, alpha=0.6, lam=2.5).double()
        with torch.no_grad():
            module.log_lam.add_(torch.tensor([0.0, 0.3, -0.2], dtype=torch.float64))
        xs = x.clone().requires_grad_()
        y = module(xs)
        results.append((y, *torch.autograd.grad(y.square().sum(), [xs, *module.parameters()])))
    for got, want in zip(*results):
        assert_close(got, want, kind="grad")


def test_validation_is_cached_per_key_and_still_runs_for_a_new_key():
    """Guards against: a cached key skipping the checks of a different shape, dtype or setting."""
    module = poolbench.create("dpp_lite_sym", 4, 2, 2, 0, tier="cpp")
    x = torch.randn(1, 4, 6, 6)
    module(x)
    assert len(module._validated) == 1
    module(x)
    assert len(module._validated) == 1  # same key: no new entry
    with pytest.raises(ValueError, match="input has 3 channels but the pooler was built for 4"):
        module(torch.randn(1, 3, 6, 6))
    with pytest.raises(ValueError, match="window of size 2 is larger than the padded input"):
        module(torch.randn(1, 4, 1, 6))
    with pytest.raises(TypeError, match="floating point"):
        module(torch.ones(1, 4, 6, 6, dtype=torch.int64))
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        module([[1.0]])
    assert len(module._validated) == 1  # failed checks are never remembered
    module(torch.randn(1, 4, 8, 8, dtype=torch.float64))
    assert len(module._validated) == 2
    module.eps2 = 2e-3  # a changed setting is a new key
    assert_close(module(x), PF.dpp(x, module.alpha, module.lam, 2, 2, 0, eps2=2e-3, tier="vectorized"))
    assert len(module._validated) == 3


def test_full_guide_check_is_not_skipped_for_a_new_shape():
    module = poolbench.create("dpp_full_sym", 2, 2, 2, 0, tier="cpp")
    module(torch.randn(1, 2, 6, 6))
    with pytest.raises(ValueError, match="Full-DPP's 3x3 guide"):
        module(torch.randn(1, 2, 7, 7))


def test_cached_module_copies_and_pickles_with_its_own_parameters():
    """The cache holds closures over the module: a deep copy must not run the original's parameters."""
    module = poolbench.create("dpp_lite_sym", 2, 2, 2, 0, tier="cpp")
    x = torch.randn(1, 2, 4, 4)
    module(x)
    clone = copy.deepcopy(module)
    with torch.no_grad():
        clone.log_lam.fill_(1.5)
    assert_close(clone(x), PF.dpp(x, clone.alpha, clone.lam, tier="vectorized"))
    assert not torch.allclose(clone(x), module(x))
    restored = pickle.loads(pickle.dumps(module))
    assert_close(restored(x), module(x))


def test_functional_reaches_lambda_and_alpha_zero_with_finite_gradients():
    """λ = 0 (and α = 0) stay reachable in the functional form: α, λ are passed as given, not as logs."""
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    lam = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    y = PF.dpp(x, alpha, lam, tier="cpp")
    assert_close(y, F.avg_pool2d(x, 2))  # λ = 0: every weight is α + 1, i.e. average pooling
    grads = torch.autograd.grad(y.square().sum(), [x, alpha, lam])
    want = torch.autograd.grad(PF.dpp(x, alpha, lam, tier="vectorized").square().sum(), [x, alpha, lam])
    for got, expected in zip(grads, want):
        assert torch.isfinite(got).all()
        assert_close(got, expected, kind="grad")


def test_host_cost_script_reports_counts_and_paired_ratios():
    result = host_cost.measure("cpp", rounds=3, repeats=5)
    assert len(result["ops_inference"]) == 1 and len(result["max_ops_inference"]) == 1
    assert result["inference_ratio"] > 0 and result["train_ratio"] > 0
