"""One equivalence contract: ``poolbench check``, the gate and the tests reach the same verdict.

Guards against the two checkers drifting apart again (they once used
different parameter noise, gradient rules and reference-tier rules).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from poolbench.verify import check, equivalence
from poolbench import gate, registry
from poolbench.base import Pool2d


class _Scaled(Pool2d):
    """avg pooling × a learned per-channel scale; ``grad_skew`` changes only the scale's gradient."""

    def __init__(self, channels, kernel_size=2, stride=2, padding=0, offset=0.0, grad_skew=0.0):
        super().__init__(channels, kernel_size, stride, padding)
        self.scale = torch.nn.Parameter(torch.ones(channels))
        self.offset, self.grad_skew = offset, grad_skew

    def pool(self, x):
        avg = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=False)
        scale = self.scale.view(1, -1, 1, 1)
        skew = self.grad_skew * avg * (scale - scale.detach())  # zero in value, not in gradient
        return avg * scale + skew + self.offset


@pytest.fixture
def probes(isolated_registries):
    gate.clear_equivalence_cache()
    registry.register("eq_probe", "reference")(lambda c, k, s, p: _Scaled(c, k, s, p))
    registry.register("eq_probe", "vectorized")(lambda c, k, s, p: _Scaled(c, k, s, p))
    registry.register("eq_probe", "compiled")(lambda c, k, s, p: _Scaled(c, k, s, p, offset=1e-2))
    registry.register("eq_probe", "cpp")(lambda c, k, s, p: _Scaled(c, k, s, p, grad_skew=0.05))
    yield
    gate.clear_equivalence_cache()


@pytest.mark.parametrize("tier, ok, problem", (("vectorized", True, None), ("compiled", False, "output differs"),
                                               ("cpp", False, "gradient of scale")))
def test_check_and_gate_reach_the_same_verdict(probes, tier, ok, problem):
    from_check = check.check_equivalence("eq_probe", tier, check.CASES[1])
    from_gate = gate.equivalence_at("eq_probe", tier, (1, 8, 32, 32), gate.BenchConfig(resolution=32, crop=8))
    assert (from_check.status == "pass") is ok, from_check
    assert from_gate.ok is ok, from_gate
    if problem:
        assert problem in from_check.detail and problem in from_gate.message


def test_reference_tier_rule():
    assert equivalence.reference_tier("dpp_lite_sym") == "reference"
    assert equivalence.reference_tier("max") == "vectorized"  # a single-tier pooler: itself, in float64


def test_perturbation_is_reproducible_and_moves_every_parameter():
    first = equivalence.perturb_parameters(_Scaled(3), seed=4)
    second = equivalence.perturb_parameters(_Scaled(3), seed=4)
    assert torch.equal(first.scale, second.scale)
    assert (first.scale != 1).all()


def test_nan_in_one_side_only_is_an_infinite_error():
    expected = torch.zeros(3, dtype=torch.float64)
    assert equivalence.input_error(torch.tensor([0.0, float("nan"), 0.0]), expected, torch.float32)[0] == float("inf")
    both = torch.tensor([0.0, float("nan"), 0.0])
    assert equivalence.input_error(both.float(), both.double(), torch.float32) == (0.0, 0.0)
