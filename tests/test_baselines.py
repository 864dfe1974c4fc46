"""The baseline poolers: shared contract, then each pooler's defining property.

The contract tests are parametrised from the registry (every pooler of family
"baseline", stochastic ones by their registered flag), so a new baseline is
tested as soon as it registers.  Every baseline gets the same contract tests (registration, output size over
several geometries, parameter count == registry formula, gradcheck of input
*and* parameters in float64, wrong channels rejected, finite at |x| = 1e4,
half precision close to float32).  The per-pooler tests pin what makes each
one that pooler (vs torch's own ops, the authors' formulas, or a loop
reference), so a change to its maths fails here.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import poolbench
from poolbench.stochastic import Seeded
from poolbench.tolerances import assert_close, tolerance


def baseline_poolers() -> tuple[str, ...]:
    """Every registered baseline pooler (family "baseline"), read from the registry."""
    return tuple(sorted({spec.name for spec in poolbench.specs() if spec.family == "baseline"}))


BASELINES = baseline_poolers()
STOCHASTIC = {name for name in BASELINES if poolbench.get_spec(name).stochastic}

#: (input shape, kernel_size, stride, padding): even/odd sizes, overlapping windows, batch 1, padding.
GEOMETRIES = (
    ((2, 3, 8, 8), 2, 2, 0),
    ((2, 3, 7, 9), 3, 2, 1),
    ((1, 3, 7, 5), 2, 2, 0),
    ((1, 3, 5, 6), 3, 1, 1),
    ((2, 3, 5, 7), 2, 2, 1),
    ((1, 3, 11, 4), 5, 3, 2),
)


def build(name, channels=3, kernel_size=2, stride=2, padding=0, device="cpu", **options):
    if name in STOCHASTIC and "generator" not in options:
        options.setdefault("seed", 0)
    return poolbench.create(name, channels, kernel_size, stride, padding, tier=poolbench.tiers(name)[0], device=device,
                            **options)


def randomise_parameters(module, scale=0.3, seed=0):
    """Move learned parameters off their init, which is often a special point (zero gates, constant logits)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return module


def windows_of(x, kernel_size, stride, padding):
    """(N, C, k², L) windows and (k², L) inside mask, computed independently of impls._window."""
    n, c, h, w = x.shape
    cols = F.unfold(x, kernel_size, padding=padding, stride=stride).view(n, c, kernel_size**2, -1)
    inside = F.unfold(torch.ones(1, 1, h, w, dtype=x.dtype), kernel_size, padding=padding, stride=stride)[0] > 0
    return cols, inside


def binomial_conv(x, stride):
    """Zhang's BlurPool(filt_size=3): reflect pad 1, depthwise [1,2,1]ᵀ[1,2,1]/16, stride s."""
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype)
    kernel = (torch.outer(taps, taps) / 16).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, stride=stride, groups=x.shape[1])


# --------------------------------------------------------------------------------------------------
# The contract every baseline shares
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BASELINES)
def test_registered_once_as_vectorized_baseline(name):
    assert poolbench.registry.tiers(name) == ["vectorized"]
    spec = poolbench.get_spec(name, "vectorized")
    assert spec.family == "baseline"
    # The flag is what the checks and the gate read to seed a pooler: it must match the module's kind.
    assert spec.stochastic == isinstance(build(name), Seeded)
    assert spec.learnable == any(True for _ in build(name).parameters())
    # Every baseline prices itself (a fused kernel without a formula could not be counted).
    assert spec.macs is not None and spec.macs(poolbench.macs.PoolGeometry(1, 3, 8, 8, 2, 2, 0), {}) > 0
    # Stochastic poolers route the gradient to the sampled element (like max pooling): differentiable.
    assert spec.differentiable


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("shape, kernel_size, stride, padding", GEOMETRIES)
def test_output_has_the_standard_pooled_size(name, shape, kernel_size, stride, padding, device):
    module = build(name, shape[1], kernel_size, stride, padding, device=device)
    x = torch.randn(shape, device=device)
    expected = F.max_pool2d(x, kernel_size, stride, padding).shape  # torch's floor((H+2p-k)/s)+1
    for training in (True, False):
        y = module.train(training)(x)
        assert y.shape == expected, f"{name} train={training}: {tuple(y.shape)} != {tuple(expected)}"
        assert y.dtype == x.dtype and y.device == x.device
        assert torch.isfinite(y).all()
    assert tuple(expected[2:]) == module.output_size(*shape[2:])


@pytest.mark.parametrize("name", BASELINES)
def test_parameter_count_matches_registry(name):
    spec = poolbench.get_spec(name, "vectorized")
    for channels, kernel_size in ((3, 2), (5, 3), (64, 2)):
        module = build(name, channels, kernel_size, 2, kernel_size // 2)
        assert sum(p.numel() for p in module.parameters()) == spec.param_count(channels, kernel_size)


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("shape, kernel_size, stride, padding", (((1, 2, 5, 5), 3, 2, 1), ((2, 2, 4, 5), 2, 2, 0)))
def test_gradcheck_input_and_parameters(name, shape, kernel_size, stride, padding):
    module = randomise_parameters(build(name, shape[1], kernel_size, stride, padding).double())
    names = [n for n, _ in module.named_parameters()]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())

    def run(x, *params):
        if name in STOCHASTIC:
            module.reseed()  # the same draw at every evaluation
        return functional_call(module, dict(zip(names, params)), (x,))

    modes = (False, True) if name in STOCHASTIC else (True,)
    # Finite differences cost two forwards per input element: LIP's official bottleneck logit module has
    # ~150k weights, so poolers that large are checked along random directions (gradcheck's fast mode).
    fast = sum(p.numel() for p in params) > 1000
    for training in modes:
        module.train(training)
        assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-5, fast_mode=fast), \
            f"{name} train={training}"


@pytest.mark.parametrize("name", BASELINES)
def test_rejects_wrong_channels(name):
    module = build(name, 3)
    with pytest.raises(ValueError, match="input has 4 channels but the pooler was built for 3"):
        module(torch.randn(1, 4, 6, 6))


@pytest.mark.parametrize("name", BASELINES)
def test_finite_output_and_gradient_at_large_magnitude(name):
    """|x| = 1e4 in float32: exp-weighted poolers must be max-subtracted, Lp pooling scaled."""
    module = build(name, 3, 3, 2, 1)
    x = (torch.randn(2, 3, 9, 9) * 1e4).requires_grad_(True)
    for training in (True, False):
        y = module.train(training)(x)
        y.sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all(), f"{name} train={training}"
        x.grad = None


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("low", (torch.float16, torch.bfloat16))
def test_half_precision_close_to_float32(name, low, device):
    module = randomise_parameters(build(name, 3, 3, 2, 1, device=device))
    x = torch.randn(2, 3, 9, 8, device=device).to(low)
    for training in ((True, False) if name in STOCHASTIC else (False,)):
        module.train(training)
        if name in STOCHASTIC:
            module.reseed()
        y_low = module(x)
        if name in STOCHASTIC:
            module.reseed()
        y_ref = module(x.float())
        assert y_low.dtype == low
        assert_close(y_low.float(), y_ref, dtype=low, msg=f"{name} train={training}")


# --------------------------------------------------------------------------------------------------
# Each pooler's defining property
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, kernel_size, stride, padding", GEOMETRIES)
def test_max_and_avg_equal_torch(shape, kernel_size, stride, padding, device, dtype):
    x = torch.randn(shape, device=device, dtype=dtype)
    k, s, p = kernel_size, stride, padding
    assert_close(build("max", shape[1], k, s, p, device)(x), F.max_pool2d(x, k, s, p), dtype)
    assert_close(build("avg", shape[1], k, s, p, device)(x),
                 F.avg_pool2d(x, k, s, p, count_include_pad=False), dtype)


def test_strided_conv_is_a_full_strided_convolution():
    module = build("strided_conv", 3, 3, 2, 1).double()
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    assert_close(module(x), F.conv2d(x, module.weight, module.bias, stride=2, padding=1))


@pytest.mark.parametrize("norm_type, positive", ((2.0, False), (3.0, True), (1.5, True)))
@pytest.mark.parametrize("kernel_size, stride", ((2, 2), (3, 1), (3, 2)))
def test_lp_is_torch_lppool_divided_by_window_size(norm_type, positive, kernel_size, stride):
    """torch.nn.LPPool2d sums x^p (and uses x^p, not |x|^p): ours = LPPool2d / (k²)^(1/p) without padding."""
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64)
    if positive:
        x = x.abs()
    ours = build("lp", 3, kernel_size, stride, 0, norm_type=norm_type).double()(x)
    theirs = torch.nn.LPPool2d(norm_type, kernel_size, stride)(x)
    assert_close(ours, theirs / (kernel_size**2) ** (1 / norm_type))


def test_lp_padding_is_excluded_and_large_values_do_not_overflow():
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    ours = build("lp", 2, 3, 2, 1).double()(x)
    mean = F.avg_pool2d(x.abs() ** 2, 3, 2, 1, count_include_pad=False)
    assert_close(ours, mean.sqrt())
    # (1e20)² overflows float32; the per-window scaling must not.
    big = torch.full((1, 1, 4, 4), 1e20)
    assert_close(build("lp", 1)(big), torch.full((1, 1, 2, 2), 1e20))


def test_lp_zero_window_has_zero_gradient_not_nan():
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)
    build("lp", 1)(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_lp_rejects_norm_below_one():
    with pytest.raises(ValueError, match="norm_type must be a finite number >= 1, got 0.5"):
        build("lp", 3, norm_type=0.5)


@pytest.mark.parametrize("name", ("mixed", "gated"))
def test_mixed_and_gated_start_as_half_max_half_avg(name, device, dtype):
    x = torch.randn(2, 3, 7, 9, device=device, dtype=dtype)
    expected = 0.5 * F.max_pool2d(x, 3, 2, 1) + 0.5 * F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    assert_close(build(name, 3, 3, 2, 1, device)(x), expected, dtype)


def test_mixed_uses_sigmoid_of_its_logit():
    module = build("mixed", 3).double()
    with torch.no_grad():
        module.logit.fill_(1.3)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    a = torch.sigmoid(torch.tensor(1.3, dtype=torch.float64))
    assert_close(module(x), a * F.max_pool2d(x, 2, 2) + (1 - a) * F.avg_pool2d(x, 2, 2))


def test_gated_gate_is_sigmoid_of_mask_dot_window_shared_across_channels():
    module = randomise_parameters(build("gated", 2, 3, 2, 1).double())
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64)
    cols, _ = windows_of(x, 3, 2, 1)  # padded positions are 0 and add nothing to ω·window
    gate = torch.sigmoid(torch.einsum("q,ncql->ncl", module.gate.flatten(), cols)).view(2, 2, 4, 3)
    expected = gate * F.max_pool2d(x, 3, 2, 1) + (1 - gate) * F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    assert_close(module(x), expected)


def test_softpool_equals_the_authors_formula():
    """Stergiou's fallback avg_pool(x·e^x)/avg_pool(e^x): padded zeros add nothing to either sum."""
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    expected = F.avg_pool2d(x * x.exp(), 3, 2, 1) / F.avg_pool2d(x.exp(), 3, 2, 1)
    assert_close(build("softpool", 3, 3, 2, 1).double()(x), expected)


def test_softpool_tends_to_max_as_the_scale_grows():
    x = torch.randn(2, 3, 8, 8)
    module = build("softpool", 3)
    gaps = []
    for scale in (1.0, 10.0, 1e2, 1e4):
        y = module(x * scale) / scale
        assert torch.isfinite(y).all()
        gaps.append((F.max_pool2d(x, 2, 2) - y).abs().max().item())
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 0.1
    assert_close(module(x * 1e4) / 1e4, F.max_pool2d(x, 2, 2))


def test_stochastic_is_reproducible_from_its_seed():
    x = torch.randn(2, 3, 8, 8).relu()
    first, again = build("stochastic", seed=3), build("stochastic", seed=3)
    y = first(x)
    assert torch.equal(y, again(x))
    first.reseed()
    assert torch.equal(y, first(x))
    assert not torch.equal(y, build("stochastic", seed=4)(x))
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(y, build("stochastic", generator=generator)(x))


def test_stochastic_sample_is_a_positive_element_of_its_window():
    x = torch.randn(2, 3, 9, 8)
    y = build("stochastic", 3, 3, 2, 1, seed=1)(x)
    cols, inside = windows_of(x, 3, 2, 1)
    flat = y.flatten(2).unsqueeze(2)
    assert ((cols == flat) & inside).any(2).all(), "a sample is not a real element of its window"
    has_positive = ((cols > 0) & inside).any(2)
    assert (flat.squeeze(2)[has_positive] > 0).all(), "sampled a value with probability 0"


def test_stochastic_eval_is_probability_weighted_mean():
    """Σ P·x with P = relu(x)/Σ relu(x), by explicit loops; a window with no positive value is averaged."""
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    x[0, 0, :3, :3] = -x[0, 0, :3, :3].abs()  # first window (k=3, s=2, p=1) has no positive value
    y = build("stochastic", 2, 3, 2, 1).double().eval()(x)
    expected = torch.empty_like(y)
    for c in range(2):
        for i in range(y.shape[2]):
            for j in range(y.shape[3]):
                window = x[0, c, max(2 * i - 1, 0):2 * i + 2, max(2 * j - 1, 0):2 * j + 2]
                act = window.clamp(min=0)
                expected[0, c, i, j] = (act * window).sum() / act.sum() if act.sum() > 0 else window.mean()
    assert_close(y, expected)


def test_stochastic_sampling_frequencies_follow_relu_probabilities():
    """One 2×2 window repeated 8192 times: each position's frequency is within 5σ of P."""
    window = torch.tensor([[0.1, 0.2], [0.0, -0.5]])  # P = (1/3, 2/3, 0, 0)
    draws = 8192
    x = window.expand(draws, 1, 2, 2).contiguous()
    y = build("stochastic", 1, seed=7)(x).flatten()
    for value, probability in ((0.1, 1 / 3), (0.2, 2 / 3), (0.0, 0.0), (-0.5, 0.0)):
        frequency = (y == value).double().mean().item()
        bound = 5 * math.sqrt(probability * (1 - probability) / draws)
        assert abs(frequency - probability) <= bound, (value, frequency, probability)


def test_stochastic_train_gradient_goes_to_the_sampled_element():
    x = torch.rand(1, 1, 4, 4, requires_grad=True)
    y = build("stochastic", 1, seed=2)(x)
    y.sum().backward()
    assert x.grad.sum() == y.numel()
    assert torch.equal(x.detach()[x.grad.bool()].sort().values, y.detach().flatten().sort().values)


def test_s3pool_reproducible_and_eval_max_option_is_max_pooling():
    x = torch.randn(2, 3, 12, 12)
    module = build("s3pool", 3, 2, 2, 0, seed=5, grid_size=4, eval_mode="max")
    y = module(x)
    assert torch.equal(y, build("s3pool", 3, 2, 2, 0, seed=5, grid_size=4)(x))
    assert not torch.equal(y, build("s3pool", 3, 2, 2, 0, seed=6, grid_size=4)(x))
    dense = F.max_pool2d(x, 2, 1)
    assert torch.isin(y, dense).all(), "S3Pool must keep values of the stride-1 max map"
    module.eval()
    assert torch.equal(module(x), module(x))
    assert torch.equal(module(x), F.max_pool2d(x, 2, 2))
    assert torch.equal(build("s3pool", 3, 3, 2, 1, eval_mode="max").eval()(x), F.max_pool2d(x, 3, 2, 1))


def test_s3pool_rejects_grid_not_multiple_of_stride():
    with pytest.raises(ValueError, match=r"grid_size must be a positive multiple of stride \(2\), got 3"):
        build("s3pool", 3, 2, 2, 0, grid_size=3)


@pytest.mark.parametrize("name", ("blurpool", "maxblur"))
@pytest.mark.parametrize("shape, kernel_size, stride, padding", GEOMETRIES + (((1, 3, 1, 5), 2, 1, 1),))
def test_blur_keeps_a_constant_image_constant(name, shape, kernel_size, stride, padding):
    """Reflect padding: zero padding would darken the border of a constant image."""
    x = torch.full(shape, 2.5)
    y = build(name, shape[1], kernel_size, stride, padding)(x)
    assert_close(y, torch.full_like(y, 2.5))


@pytest.mark.parametrize("height, width", ((8, 8), (7, 9)))
def test_blurpool_is_zhangs_blurpool_on_the_pooled_grid(height, width):
    x = torch.randn(2, 3, height, width, dtype=torch.float64)
    zhang = binomial_conv(x, 2)  # ceil(H/2) × ceil(W/2)
    assert_close(build("blurpool", 3, 3, 2, 1, filter_size=3).double()(x), zhang)
    # k=2,s=2,p=0 keeps floor(H/2): the same samples without the last row of an odd size.
    assert_close(build("blurpool", 3, 2, 2, 0, filter_size=3).double()(x), zhang[..., : height // 2, : width // 2])


@pytest.mark.parametrize("kernel_size, stride, padding", ((2, 2, 0), (2, 1, 0), (3, 3, 1)))  # stem: test_fidelity
def test_maxblur_is_blur_of_stride1_max(kernel_size, stride, padding):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    expected = binomial_conv(F.max_pool2d(x, kernel_size, 1, padding), stride)
    assert_close(build("maxblur", 3, kernel_size, stride, padding, filter_size=3).double()(x), expected)


def test_blur_filter_size_option():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    # filter_size=1 is no blur: blurpool samples the window centres, maxblur is max pooling.
    assert_close(build("blurpool", 2, 3, 2, 1, filter_size=1).double()(x), x[..., ::2, ::2])
    assert_close(build("maxblur", 2, 2, 2, 0, filter_size=1).double()(x), F.max_pool2d(x, 2, 2))
    with pytest.raises(ValueError, match="filter_size must be an int from 1 to 7, got 9"):
        build("blurpool", 2, filter_size=9)


def test_lip_starts_as_average_pooling(device, dtype):
    x = torch.randn(2, 3, 7, 9, device=device, dtype=dtype)
    assert_close(build("lip", 3, 3, 2, 1, device)(x), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), dtype)


def test_lip_equals_the_authors_lip2d_with_instance_norm_logits():
    """Gao et al.'s lip2d (avg_pool of x·e^l over avg_pool of e^l) with l = 12·σ(InstanceNorm(conv(x)))."""
    module = randomise_parameters(build("lip", 3, 3, 2, 1, logit_conv="depthwise").double(), scale=1.0)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    norm = torch.nn.InstanceNorm2d(3, affine=True).double()
    with torch.no_grad():
        norm.weight.copy_(module.norm_weight)
        norm.bias.copy_(module.norm_bias)
    logit = 12 * torch.sigmoid(norm(F.conv2d(x, module.logit_weight, padding=1, groups=3)))
    weight = logit.exp()
    expected = F.avg_pool2d(x * weight, 3, 2, 1) / F.avg_pool2d(weight, 3, 2, 1)
    assert_close(module(x), expected)


def naive_edscw(x, kernel_size, stride, padding):
    """e^DSC-weighted mean with DSC(x, x̄) = 2·|x·x̄|/(x² + x̄²), written as in the authors' kernel."""
    cols, inside = windows_of(x, kernel_size, stride, padding)
    mean = cols.sum(2, keepdim=True) / inside.sum(0).view(1, 1, 1, -1)
    weight = torch.exp(2 * (cols * mean).abs() / (cols**2 + mean**2)) * inside
    pooled = (weight * cols).sum(2) / weight.sum(2)
    n, c = x.shape[:2]
    return pooled.view(n, c, *F.max_pool2d(x, kernel_size, stride, padding).shape[2:])


def test_adapool_blends_edscw_and_softpool_per_channel():
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    module = build("adapool", 3, 3, 2, 1).double()
    softpool = build("softpool", 3, 3, 2, 1)(x)
    edscw = naive_edscw(x, 3, 2, 1)
    assert_close(module(x), 0.5 * edscw + 0.5 * softpool)
    with torch.no_grad():
        module.beta_logit.copy_(torch.tensor([60.0, -60.0, 0.4], dtype=torch.float64))
    beta = torch.sigmoid(torch.tensor(0.4, dtype=torch.float64))
    y = module(x)
    assert_close(y[:, 0], edscw[:, 0])
    assert_close(y[:, 1], softpool[:, 1])
    assert_close(y[:, 2], beta * edscw[:, 2] + (1 - beta) * softpool[:, 2])


def test_dice_sorensen_coefficient_is_overflow_free_with_dsc00_one():
    from poolbench.impls.adapool import dice_sorensen

    a = torch.tensor([2.0, -1.0, 0.0, 1e30, 3.0])
    b = torch.tensor([1.0, 1.0, 0.0, 1e30, 0.0])
    # (1e30)² overflows float32: the naive 2ab/(a²+b²) is inf/inf = NaN there.
    assert_close(dice_sorensen(a, b), torch.tensor([0.8, 1.0, 1.0, 1.0, 0.0]))


def test_adapool_zero_windows_are_finite():
    """DSC(0, 0) is 0/0 in the authors' kernel; here it is 1, with finite gradients."""
    x = torch.zeros(1, 2, 4, 4, requires_grad=True)
    y = build("adapool", 2)(x)
    y.sum().backward()
    assert torch.equal(y, torch.zeros_like(y)) and torch.isfinite(x.grad).all()


def test_adapool_rejects_beta_outside_open_interval():
    with pytest.raises(ValueError, match="beta must be a number strictly between 0 and 1"):
        build("adapool", 3, beta=1.0)


def test_tolerance_table_covers_half_precision():
    """The half-precision test above relies on these entries: looser than float32's, for outputs and gradients."""
    for low in (torch.float16, torch.bfloat16):
        for kind in ("output", "grad"):
            rtol, atol = tolerance(low, kind)
            rtol32, atol32 = tolerance(torch.float32, kind)
            assert rtol > rtol32 and atol >= atol32
