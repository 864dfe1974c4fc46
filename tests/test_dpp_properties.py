"""The paper's DPP properties (slides, "Properties") and the numerical range poolbench promises (λ ≤ 200, |x| ≤ 1e4)."""
import pytest
import torch
import torch.nn.functional as F

import poolbench
from dpp_tester import VARIANTS, random_dpp_parameters
from poolbench import functional as PF
from poolbench.tolerances import assert_close

PROPERTY_TIERS = ("reference", "vectorized")


def separated_window_input(batch=2, channels=3, size=8, seed=0):
    """2×2 windows whose values sit ≥ 1 apart around the window mean, at random offsets.

    Each window is a shuffle of [0,1,2,4] (farthest from the mean: the maximum)
    or [0,2,3,4] (farthest: the minimum) plus an offset; deviations from the
    mean stay ≤ 2.25, so at λ = 200 the weights differ by ~1e-90 and still
    fit float64 for the plainly written reference.
    """
    generator = torch.Generator().manual_seed(seed)
    half = size // 2
    patterns = torch.tensor([[0.0, 1, 2, 4], [0.0, 2, 3, 4]], dtype=torch.float64)
    choice = torch.randint(0, 2, (batch, channels, half, half), generator=generator)
    order = torch.rand(batch, channels, half, half, 4, generator=generator).argsort(-1)
    offset = torch.randint(-50, 50, (batch, channels, half, half, 1), generator=generator).double() * 10
    values = patterns[choice].gather(-1, order) + offset
    return values.view(batch, channels, half, half, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, size, size)


def extremum_pool(x, kernel_size, stride):
    """The window value farthest from the window mean (ties averaged): Lite-DPP-Sym's λ → ∞ limit."""
    windows = F.unfold(x, kernel_size, stride=stride).view(x.shape[0], x.shape[1], kernel_size**2, -1)
    distance = (windows - windows.mean(2, keepdim=True)).abs()
    farthest = distance == distance.amax(2, keepdim=True)
    out = (windows * farthest).sum(2) / farthest.sum(2)
    size = (x.shape[-2] - kernel_size) // stride + 1
    return out.view(x.shape[0], x.shape[1], size, -1)


@pytest.mark.parametrize("tier", PROPERTY_TIERS)
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("geometry", [(2, 2, 0), (3, 2, 1)])
def test_lambda_zero_is_average_pooling(name, tier, geometry):
    k, s, p = geometry
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    alpha, _, guide = random_dpp_parameters(3, full="full" in name)
    y = PF.dpp(x, alpha, torch.zeros(3, dtype=torch.float64), k, s, p, asym="asym" in name, guide=guide, tier=tier)
    assert_close(y, F.avg_pool2d(x, k, s, p, count_include_pad=False))


@pytest.mark.parametrize("tier", PROPERTY_TIERS)
def test_large_lambda_lite_asym_is_max_pooling(tier):
    x = separated_window_input()
    y = PF.dpp(x, 1e-12, 200.0, asym=True, tier=tier)
    assert_close(y, F.max_pool2d(x, 2, 2))


@pytest.mark.parametrize("tier", PROPERTY_TIERS)
def test_large_lambda_lite_sym_is_extremum_pooling(tier):
    x = separated_window_input(seed=1)
    y = PF.dpp(x, 1e-12, 200.0, asym=False, tier=tier)
    assert_close(y, extremum_pool(x, 2, 2))
    assert not torch.allclose(y, F.max_pool2d(x, 2, 2)), "Sym must pick minima too, not only maxima"


@pytest.mark.parametrize("tier", ["vectorized", "compiled"])
@pytest.mark.parametrize("name", VARIANTS)
def test_finite_outputs_and_gradients_over_spec_range(name, tier):
    """λ ∈ [0, 200] and |x| ≤ 1e4 in float32, including flat (post-ReLU) windows."""
    x = torch.randn(2, 4, 8, 8) * 1e4
    x[:, :, :4] = 0.0  # flat windows: ℓ ≈ (λ/2)·log ε² is hugely negative at λ = 200
    x[0, 0, 4:6, 4:6] = 1e4
    x.requires_grad_()
    for lam in (1e-6, 1.0, 10.0, 50.0, 200.0):
        module = poolbench.create(name, 4, tier=tier, lam=lam, alpha=1e-3)
        y = module(x)
        y.square().mean().backward()
        assert torch.isfinite(y).all(), f"λ={lam}"
        for label, grad in [("input", x.grad), *((n, p.grad) for n, p in module.named_parameters())]:
            assert torch.isfinite(grad).all(), f"λ={lam}: gradient of {label} not finite"
        x.grad = None


def test_lambda_zero_and_alpha_zero_reachable_in_functional():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    alpha = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    lam = torch.full((2,), 2.0, dtype=torch.float64, requires_grad=True)
    y = PF.dpp(x, alpha, lam)
    assert_close(y, PF.dpp(x, alpha, lam, tier="reference"))
    y.sum().backward()
    assert torch.isfinite(alpha.grad).all() and torch.isfinite(lam.grad).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name, per_channel", [("dpp_lite_sym", 2), ("dpp_lite_asym", 2), ("dpp_full_sym", 12),
                                               ("dpp_full_asym", 12), ("s3dpp_lite_sym", 2)])
def test_parameter_count_per_feature_map(name, per_channel):
    for tier in poolbench.tiers(name):
        # every registered tier, runnable here or not: build through the factory (create() refuses GPU-only tiers)
        module = poolbench.get_spec(name, tier).factory(7, 2, 2, 0)
        assert sum(p.numel() for p in module.parameters()) == per_channel * 7
        assert poolbench.get_spec(name, tier).param_count(7, 2) == per_channel * 7


def test_module_exposes_positive_per_channel_alpha_and_lambda():
    module = poolbench.create("dpp_full_asym", 5, alpha=0.25, lam=3.0, eps2=1e-2)
    assert module.alpha.shape == (5,) and module.lam.shape == (5,)
    assert_close(module.alpha, torch.full((5,), 0.25))
    assert_close(module.lam, torch.full((5,), 3.0))
    assert module.eps2 == 1e-2
    expected_filter = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    assert_close(module.guide_weight[3, 0], expected_filter)
    assert_close(module.guide_bias, torch.zeros(5))


@pytest.mark.parametrize("tier", PROPERTY_TIERS)
def test_nan_input_poisons_only_its_window(tier):
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    x[0, 1, 2, 3] = float("nan")
    y = PF.dpp(x, 1.0, 2.0, tier=tier)
    nan_positions = torch.isnan(y).nonzero().tolist()
    assert nan_positions == [[0, 1, 1, 1]]


def test_scale_invariant_option_differs_and_matches_reference():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64) * 5
    plain = PF.dpp(x, 1.0, 2.0)
    invariant = PF.dpp(x, 1.0, 2.0, scale_invariant=True)
    assert_close(invariant, PF.dpp(x, 1.0, 2.0, scale_invariant=True, tier="reference"))
    assert not torch.allclose(plain, invariant)
    # Scale invariance: the weights depend on x only through d²/mean(d²) (ε² → 0), so scaling x scales the output.
    def invariant_dpp(t):
        return PF.dpp(t, 1.0, 2.0, eps2=1e-14, scale_invariant=True)

    assert_close(invariant_dpp(x * 10), 10 * invariant_dpp(x))


def test_s3dpp_is_dpp_at_stride_one_then_sampled():
    """Eval: the 2×2 average of the stride-1 DPP map of the bottom/right replicate-padded input (the authors')."""
    module = poolbench.create("s3dpp_lite_sym", 3, seed=5).eval()
    x = torch.randn(2, 3, 8, 8)
    stride_one = PF.dpp(torch.nn.functional.pad(x, (0, 1, 0, 1), mode="replicate"), module.alpha, module.lam, 2, 1, 0)
    assert_close(module(x), torch.nn.functional.avg_pool2d(stride_one, 2, 2))
    module.train()
    first = module(x)
    module.reseed()
    assert torch.equal(first, module(x)), "same seed, same sample"
    assert first.shape == (2, 3, 4, 4)
