"""A pooler's declared gradient rule: how the equivalence contract judges its gradients, and why LIP needs one."""
import pytest
import torch

from poolbench import gate, registry
from poolbench.registry import GradientRule
from poolbench.verify import equivalence

LIP_RULE = registry.get_spec("lip", "vectorized").gradient_rule


def _plane(seed=0, size=224):
    return torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _verdict(actual, expected, rule=GradientRule()):
    return equivalence.compare((expected, expected), [("input", actual, expected)], torch.float32, rule)


def test_a_kink_sized_error_fails_element_wise_and_passes_per_plane():
    expected = _plane()
    actual = expected.clone()
    actual[0, 0, 100, 100:103] += 0.05  # a flipped ReLU kink: a few elements off by O(1e-2)
    strict = _verdict(actual, expected)
    assert not strict.ok and "max |difference|" in strict.problem
    assert _verdict(actual, expected, GradientRule(input="plane")).ok


@pytest.mark.parametrize("rule", [GradientRule(input="plane"), LIP_RULE], ids=["plane", "lip"])
def test_a_wrong_border_row_or_formula_still_fails_per_plane(rule):
    expected = _plane()
    border = expected.clone()
    border[..., 0, :] *= -1  # the first row's gradient with the wrong sign
    verdict = _verdict(border, expected, rule)
    assert not verdict.ok and "worst plane" in verdict.problem
    assert not _verdict(expected * 1.05, expected, rule).ok  # a formula 5% off everywhere


def test_the_pooler_reason_and_wider_tolerance_are_in_the_message():
    expected = torch.randn(64, dtype=torch.float64)
    verdict = equivalence.compare((expected, expected), [("w", expected * 1.5, expected)], torch.float32, LIP_RULE)
    assert not verdict.ok
    assert "4× gradient tolerance" in verdict.problem and "ReLU kink" in verdict.problem


def test_the_tolerance_scale_never_widens_the_output_check():
    expected = torch.randn(64, dtype=torch.float64)
    verdict = equivalence.compare((expected * (1 + 3e-4), expected), [], torch.float32, GradientRule(tolerance_scale=10))
    assert not verdict.ok and verdict.problem.startswith("output differs")


@pytest.mark.parametrize("kwargs, message", [
    ({"input": "row"}, "'element' or 'plane'"),
    ({"tolerance_scale": 0.5}, r"in \[1, 100\]"),
    ({"tolerance_scale": True}, r"in \[1, 100\]"),
])
def test_bad_rules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradientRule(**kwargs)


def test_register_refuses_a_rule_that_is_not_a_gradient_rule(isolated_registries):
    with pytest.raises(TypeError, match="GradientRule"):
        registry.register("bad_rule", "vectorized", gradient_rule={"input": "plane"})


def test_only_lip_declares_a_looser_rule():
    loose = {spec.name for spec in registry.specs() if spec.gradient_rule != GradientRule()}
    assert loose == {"lip"}


def test_lip_float32_matches_its_float64_code_at_vgg16_layer_2():
    """The time gate's check of lip[vectorized] at 1×128×112² (it failed before LIP declared its rule)."""
    gate.clear_equivalence_cache()
    config = gate.BenchConfig()
    result = gate.equivalence_at("lip", "vectorized", (1, 128, 112, 112), config)
    assert result.ok, result.message
    assert result.compared == "output+grads on the full input"
