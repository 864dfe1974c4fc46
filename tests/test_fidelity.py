"""Baseline poolers and DPP against small literal ports of the authors' official code.

Each ``official_*`` function below re-writes one formula from the authors'
repository in plain PyTorch, loop for loop where that is clearer, in float64
(the file it comes from is named in its docstring).  The poolbench module must
match it on signed input and several geometries — outputs and, where the
official code defines them, gradients.  Stochastic poolers are also tested
against the distribution their official sampling draws from.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import poolbench
from poolbench import functional as PF
from poolbench.stochastic import s3_indices
from poolbench.tolerances import assert_close
from poolbench.verify.equivalence import perturb_parameters


def create(name, channels=3, kernel_size=2, stride=2, padding=0, **options):
    return poolbench.create(name, channels, kernel_size, stride, padding, tier="vectorized", **options).double()


def signed_input(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# AdaPool (alexandrosstergiou/adaPool)
# --------------------------------------------------------------------------------------------------

def official_adapool(x, beta, kernel_size, stride, padding, signed=False):
    """pytorch/CUDA/adapool_cuda_kernel.cu (``dsc`` = 2·abs(x1·x2)/(x1²+x2²) with the window mean, weights
    e^dist / Σ e^dist; eM: e^x / Σ e^x) blended as idea.py's non-native ``beta*EDSCW + (1-beta)*EM``.

    Window loop as in ``AdaPool2dForward``; positions outside the input are skipped (``continue``), which
    is how padding behaves.  ``signed=True`` is the earlier ``jvs`` revision, 2·x1·x2/(x1²+x2²).
    """
    n, c, h, w = x.shape
    out_h, out_w = (h + 2 * padding - kernel_size) // stride + 1, (w + 2 * padding - kernel_size) // stride + 1
    edscw, em = x.new_zeros(n, c, out_h, out_w), x.new_zeros(n, c, out_h, out_w)
    for ph, pw in itertools.product(range(out_h), range(out_w)):
        ys = [y for y in range(ph * stride - padding, ph * stride - padding + kernel_size) if 0 <= y < h]
        xs = [v for v in range(pw * stride - padding, pw * stride - padding + kernel_size) if 0 <= v < w]
        values = x[:, :, ys][:, :, :, xs].reshape(n, c, -1)
        avg = values.mean(-1, keepdim=True)
        product = 2 * values * avg if signed else 2 * (values * avg).abs()
        dist = product / (values**2 + avg**2)
        edscw[:, :, ph, pw] = (values * dist.exp()).sum(-1) / dist.exp().sum(-1)
        em[:, :, ph, pw] = (values * values.exp()).sum(-1) / values.exp().sum(-1)
    return beta * edscw + (1 - beta) * em


ADAPOOL_CASES = (((2, 3, 8, 8), 2, 2, 0), ((1, 3, 7, 9), 3, 2, 1), ((2, 3, 5, 6), 3, 1, 1), ((1, 3, 7, 5), 2, 2, 0))


@pytest.mark.parametrize("shape, kernel_size, stride, padding", ADAPOOL_CASES)
def test_adapool_equals_official_kernel_on_signed_input(shape, kernel_size, stride, padding):
    """Guards the sign bug: a signed Dice-Sørensen coefficient (2·x·m, not 2·|x·m|) differs by up to ~1."""
    module = create("adapool", shape[1], kernel_size, stride, padding)
    with torch.no_grad():
        module.beta_logit.copy_(torch.tensor([0.3, -1.2, 2.0]))
    x = signed_input(*shape).requires_grad_()
    beta = module.beta.detach().view(1, -1, 1, 1)
    expected = official_adapool(x, beta, kernel_size, stride, padding)
    y = module(x)
    assert_close(y, expected)
    grad = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])
    signed = official_adapool(x.detach(), beta, kernel_size, stride, padding, signed=True)
    assert (y.detach() - signed).abs().max() > 0.05, "signed input must tell |x·m| from x·m"


def test_adapool_official_beta_map():
    """beta_shape=(oH, oW): one β per output position shared by the channels, as the official AdaPool2d."""
    torch.manual_seed(0)
    module = create("adapool", 3, 2, 2, 0, beta_shape=(4, 3))
    assert tuple(module.beta_map.shape) == (4, 3) and sum(p.numel() for p in module.parameters()) == 12
    assert ((module.beta_map >= 0) & (module.beta_map <= 1)).all(), "clamp(randn, 0, 1) as AdaPool2d"
    with torch.no_grad():
        module.beta_map.copy_(torch.rand(4, 3, dtype=torch.float64))
    x = signed_input(2, 3, 8, 7, seed=1)
    assert_close(module(x), official_adapool(x, module.beta_map.detach(), 2, 2, 0))
    with pytest.raises(ValueError, match=r"beta map is \(4, 3\) but the input pools to 3x3"):
        module(signed_input(1, 3, 6, 6))
    with pytest.raises(ValueError, match="beta_shape must be the pooled size"):
        create("adapool", 3, beta_shape=(4,))
    with pytest.raises(ValueError, match="not both"):
        create("adapool", 3, beta=0.3, beta_shape=(4, 4))


def test_adapool_parameter_counts_of_both_forms():
    spec = poolbench.get_spec("adapool", "vectorized")
    assert spec.param_count(64, 2) == 64 == sum(p.numel() for p in create("adapool", 64).parameters())
    assert sum(p.numel() for p in create("adapool", 64, beta_shape=(28, 28)).parameters()) == 28 * 28


# --------------------------------------------------------------------------------------------------
# S3Pool (Shuangfei/s3pool) and S3DPP (visinf/dpp)
# --------------------------------------------------------------------------------------------------

def official_s3pool_eval(x, pool_size):
    """build_net.py, ``StochasticPool2DLayer.get_output_for(deterministic=True)``: Theano ``pool_2d`` max
    (ds=pool_size, st=1, ignore_border) then ``average_exc_pad`` (ds=st=pool_size, padding=pool_size/2)."""
    dense = F.max_pool2d(x, pool_size, 1)
    pad = pool_size // 2
    h, w = dense.shape[-2:]
    out_h, out_w = (h + 2 * pad - pool_size) // pool_size + 1, (w + 2 * pad - pool_size) // pool_size + 1
    out = x.new_zeros(*x.shape[:2], out_h, out_w)
    for i, j in itertools.product(range(out_h), range(out_w)):
        rows = [r for r in range(i * pool_size - pad, i * pool_size - pad + pool_size) if 0 <= r < h]
        cols = [q for q in range(j * pool_size - pad, j * pool_size - pad + pool_size) if 0 <= q < w]
        out[:, :, i, j] = dense[:, :, rows][:, :, :, cols].mean((-2, -1))
    return out


@pytest.mark.parametrize("height, width", ((8, 8), (12, 6), (7, 9), (9, 10)))
def test_s3pool_eval_is_the_official_average_of_the_stride1_max_map(height, width):
    x = signed_input(2, 3, height, width)
    module = create("s3pool", 3, 2, 2, 0, seed=0).eval()
    y = module(x)
    official = official_s3pool_eval(x, 2)
    assert y.shape[-2:] == module.output_size(height, width)
    # on odd sizes the official layer returns one extra trailing row/column, dropped here
    assert_close(y, official[..., : y.shape[-2], : y.shape[-1]])
    assert (y - F.max_pool2d(x, 2, 2)).abs().max() > 0.1, "eval must not be max pooling"


def official_s3_cell_sample(length, keep, generator):
    """build_net.py: ``T.sort(rng.permutation(n=this_n)[:n_sample_per_grid])`` for one cell."""
    return tuple(torch.randperm(length, generator=generator)[:keep].sort().values.tolist())


def assert_same_subset_distribution(draw, length, keep, draws=3000):
    """Each of the C(length, keep) row subsets of a cell must come up ~uniformly, as the official permutation."""
    generator = torch.Generator().manual_seed(0)
    counts = Counter(draw(generator) for _ in range(draws))
    subsets = list(itertools.combinations(range(length), keep))
    assert set(counts) == set(subsets)
    p = 1 / len(subsets)
    bound = 5 * math.sqrt(p * (1 - p) / draws)
    for subset in subsets:
        assert abs(counts[subset] / draws - p) <= bound, (subset, counts[subset] / draws, p)
    # and the official sampler itself draws from the same law (sanity of the port)
    official = Counter(official_s3_cell_sample(length, keep, generator) for _ in range(draws))
    assert all(abs(official[subset] / draws - p) <= bound for subset in subsets)


def test_s3pool_train_sampling_matches_the_official_distribution():
    # grid 4, stride 2 on a 12-row stride-1 map: three cells of 4 rows, each keeps a uniform 2-subset, sorted
    def first_cell(generator):
        rows = s3_indices(12, 2, 4, True, generator)
        assert len(rows) == 6 and torch.equal(rows, rows.sort().values)
        assert all(int(((rows >= 4 * c) & (rows < 4 * c + 4)).sum()) == 2 for c in range(3))
        return tuple(rows[:2].tolist())

    assert_same_subset_distribution(first_cell, 4, 2)


def official_s3dpp_eval(x, alpha, lam, scale_invariant):
    """visinf_package/S3_DPP_sym_lite.lua: four stride-2 DPPs on the input shifted by
    ``SpatialReplicationPadding(-1,1,0,0)``, ``(0,0,-1,1)``, ``(-1,1,-1,1)`` (crop one column/row at the
    left/top, replicate one at the right/bottom), interleaved by merger.lua, then s3pool.lua's eval
    ``SpatialAveragePooling(2,2,2,2)``."""
    def dpp(t):
        return PF.dpp(t, alpha, lam, 2, 2, 0, scale_invariant=scale_invariant, tier="reference")

    def shift_left(t):
        return F.pad(t[..., :, 1:], (0, 1, 0, 0), mode="replicate")

    def shift_up(t):
        return F.pad(t[..., 1:, :], (0, 0, 0, 1), mode="replicate")

    s1, s2, s3, s4 = dpp(x), dpp(shift_left(x)), dpp(shift_up(x)), dpp(shift_up(shift_left(x)))
    n, c, h, w = s1.shape
    merged = x.new_zeros(n, c, 2 * h, 2 * w)
    merged[..., 0::2, 0::2], merged[..., 0::2, 1::2] = s1, s2
    merged[..., 1::2, 0::2], merged[..., 1::2, 1::2] = s3, s4
    return F.avg_pool2d(merged, 2, 2), merged


@pytest.mark.parametrize("scale_invariant", (False, True))
@pytest.mark.parametrize("tier", ("vectorized", "reference"))
@pytest.mark.parametrize("height, width", ((8, 8), (6, 10)))
def test_s3dpp_eval_is_the_authors_s3_dpp(scale_invariant, tier, height, width):
    """Guards the old eval (plain DPP k2s2), up to ~0.9 away from the authors' S3DPP in eval."""
    module = poolbench.create("s3dpp_lite_sym", 3, tier=tier, seed=0, scale_invariant=scale_invariant,
                              alpha=0.7, lam=2.5).double().eval()
    x = signed_input(2, 3, height, width).requires_grad_()
    expected, _ = official_s3dpp_eval(x, module.alpha.detach(), module.lam.detach(), scale_invariant)
    y = module(x)
    assert_close(y, expected)
    grad = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])
    plain = PF.dpp(x.detach(), module.alpha.detach(), module.lam.detach(), 2, 2, 0, scale_invariant=scale_invariant)
    assert (y.detach() - plain).abs().max() > 0.05


def test_s3dpp_train_samples_the_authors_dense_map_with_two_cells_per_axis():
    """s3pool.lua overrides its grid with half the map: two cells per axis, each keeping a random half."""
    module = poolbench.create("s3dpp_lite_sym", 3, tier="vectorized", seed=7).double()
    x = signed_input(2, 3, 8, 12)
    _, merged = official_s3dpp_eval(x, module.alpha.detach(), module.lam.detach(), False)
    y = module.train()(x)
    generator = torch.Generator().manual_seed(7)
    rows = s3_indices(8, 2, 4, True, generator)   # 8 dense rows → cells of 4
    cols = s3_indices(12, 2, 6, True, generator)  # 12 dense columns → cells of 6
    assert_close(y, merged[..., rows, :][..., cols])

    def first_cell(generator):
        rows = s3_indices(8, 2, module.authors_grid(4, 6)[0], True, generator)
        assert int((rows < 4).sum()) == 2 and int((rows >= 4).sum()) == 2
        return tuple(rows[:2].tolist())

    assert_same_subset_distribution(first_cell, 4, 2)


@pytest.mark.parametrize("shape, kernel_size, stride, padding", (((1, 3, 7, 9), 2, 2, 0), ((2, 3, 7, 8), 3, 2, 1)))
def test_s3_poolers_train_and_eval_keep_the_standard_size(shape, kernel_size, stride, padding):
    x = signed_input(*shape)
    for name in ("s3pool", "s3dpp_lite_sym"):
        module = create(name, 3, kernel_size, stride, padding, seed=1)
        expected = module.output_size(*shape[-2:])
        assert module.train()(x).shape[-2:] == expected == module.eval()(x).shape[-2:], name


# --------------------------------------------------------------------------------------------------
# BlurPool / MaxBlur (adobe/antialiased-cnns)
# --------------------------------------------------------------------------------------------------

def official_blurpool(x, filt_size, stride):
    """antialiased_cnns/blurpool.py ``BlurPool(pad_type='reflect', pad_off=0)``: binomial filt_size taps,
    pad [(f−1)//2, ceil((f−1)/2)] each side, depthwise conv at ``stride``."""
    if filt_size == 1:
        return x[..., ::stride, ::stride]
    a = torch.tensor([math.comb(filt_size - 1, i) for i in range(filt_size)], dtype=x.dtype)
    filt = a[:, None] * a[None, :]
    filt = (filt / filt.sum()).expand(x.shape[1], 1, filt_size, filt_size)
    left, right = (filt_size - 1) // 2, math.ceil((filt_size - 1) / 2)
    return F.conv2d(F.pad(x, (left, right, left, right), mode="reflect"), filt, stride=stride, groups=x.shape[1])


def official_stem(x, filt_size=4):
    """antialiased_cnns/resnet.py, ``pool_only=True``: ``MaxPool2d(kernel_size=2, stride=1)`` then BlurPool."""
    return official_blurpool(F.max_pool2d(x, 2, 1), filt_size, 2)


@pytest.mark.parametrize("height, width", ((8, 8), (12, 10), (112, 112)))
def test_maxblur_in_the_stem_slot_is_the_official_antialiased_stem(height, width):
    """Guards MaxPool(3, 1, 1) + blur in the stem slot, up to ~1.8 away from the official stem."""
    x = signed_input(1, 3, height, width)
    y = create("maxblur", 3, 3, 2, 1)(x)
    assert_close(y, official_stem(x))
    old = official_blurpool(F.max_pool2d(x, 3, 1, 1), 4, 2)
    assert (y - old).abs().max() > 0.1


def test_maxblur_stem_on_odd_sizes_keeps_the_standard_size():
    x = signed_input(1, 3, 9, 7)
    module = create("maxblur", 3, 3, 2, 1)
    y = module(x)
    assert y.shape[-2:] == module.output_size(9, 7) == (5, 4)
    official = official_stem(x)  # 4 × 3 here: one row and column short
    assert_close(y[..., :4, :3], official)


@pytest.mark.parametrize("height, width", ((8, 8), (9, 7)))
def test_blur_defaults_to_the_official_four_tap_filter(height, width):
    x = signed_input(2, 3, height, width)
    assert create("blurpool", 3).filter_size == 4 == create("maxblur", 3).filter_size
    assert_close(create("blurpool", 3, 3, 2, 1)(x), official_blurpool(x, 4, 2))
    assert_close(create("maxblur", 3, 2, 2, 0)(x), official_blurpool(F.max_pool2d(x, 2, 1), 4, 2))


# --------------------------------------------------------------------------------------------------
# LIP (sebgao/LIP)
# --------------------------------------------------------------------------------------------------

def official_simplified_lip(x, conv_weight, norm_weight, norm_bias, kernel, stride, padding):
    """imagenet/lip_resnet.py: ``SimplifiedLIP`` logit = Conv2d(C, C, 3, padding=1, bias=False) →
    InstanceNorm2d(C, affine=True) → SoftGate (12·sigmoid); ``lip2d`` = avg_pool(x·e^l) / avg_pool(e^l)."""
    channels = x.shape[1]
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).double()
    norm = torch.nn.InstanceNorm2d(channels, affine=True).double()
    with torch.no_grad():
        conv.weight.copy_(conv_weight)
        norm.weight.copy_(norm_weight)
        norm.bias.copy_(norm_bias)
    weight = (12.0 * torch.sigmoid(norm(conv(x)))).exp()
    return F.avg_pool2d(x * weight, kernel, stride, padding) / F.avg_pool2d(weight, kernel, stride, padding)


@pytest.mark.parametrize("kernel_size, stride, padding", ((3, 2, 1), (2, 2, 0)))
def test_lip_full_form_is_the_official_simplified_lip(kernel_size, stride, padding):
    """The default at a 3×3 window (the stem's, as LIP-ResNet's), and ``logit_conv="full"`` anywhere."""
    options = {} if kernel_size == 3 else {"logit_conv": "full"}
    module = create("lip", 4, kernel_size, stride, padding, **options)
    assert module.logit_conv == "full" and tuple(module.logit_weight.shape) == (4, 4, 3, 3)
    assert not module.logit_weight.detach().any(), "zero-initialised conv, as init_layer"
    perturb_parameters(module, seed=3)  # off the zero-initialised conv: the contract's one perturbation rule
    x = signed_input(2, 4, 9, 8).requires_grad_()
    expected = official_simplified_lip(x, module.logit_weight, module.norm_weight, module.norm_bias,
                                       kernel_size, stride, padding)
    y = module(x)
    assert_close(y, expected)
    grad = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])


def test_lip_parameter_counts_of_every_form():
    spec = poolbench.get_spec("lip", "vectorized")
    full = sum(p.numel() for p in create("lip", 64, 3, 2, 1).parameters())
    bottleneck = sum(p.numel() for p in create("lip", 64).parameters())
    depthwise = sum(p.numel() for p in create("lip", 64, logit_conv="depthwise").parameters())
    assert spec.param_count(64, 3) == full == 9 * 64 * 64 + 2 * 64
    # 1×1 C→128, 3×3 128→128, 1×1 128→C and three InstanceNorms' γ, β (the official Bottleneck-128)
    assert spec.param_count(64, 2) == bottleneck == 64 * 128 + 9 * 128 * 128 + 128 * 64 + 2 * (128 + 128 + 64)
    assert depthwise == 11 * 64
    with pytest.raises(ValueError, match="logit_conv must be one of auto, bottleneck, full, depthwise, got 'dense'"):
        create("lip", 4, logit_conv="dense")


# --------------------------------------------------------------------------------------------------
# Lp pooling: non-finite input as torch's lp_pool2d
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_lp_propagates_nan_and_inf_like_torch_lp_pool2d(dtype):
    """Guards NaN → 0 and +inf → NaN: a window with NaN gives NaN, one with ±inf gives +inf."""
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[[[1.0, nan, 2.0, 3.0, -inf, 1.0],
                        [0.0, 1.0, inf, 1.0, 2.0, 0.5]]]], dtype=dtype)
    expected = F.lp_pool2d(x, 2, 2, 2)
    y = poolbench.create("lp", 1, tier="vectorized")(x)
    assert torch.isnan(y[..., 0]).all() and torch.isnan(expected[..., 0]).all()
    assert torch.equal(y[..., 1:], expected[..., 1:]) and torch.isinf(y[..., 1:]).all()
    finite = torch.tensor([[[[3.0, 4.0], [0.0, 0.0]]]], dtype=dtype)
    assert_close(poolbench.create("lp", 1, tier="vectorized")(finite), F.lp_pool2d(finite, 2, 2) / 2)


# --------------------------------------------------------------------------------------------------
# DPP initialisation (visinf/dpp)
# --------------------------------------------------------------------------------------------------

def test_dpp_authors_init_draws_as_the_lua_layers():
    torch.manual_seed(0)
    channels = 256
    module = poolbench.create("dpp_full_sym", channels, tier="vectorized", init="authors")
    bound = 1 / math.sqrt(channels)
    for theta in (module.log_alpha, module.log_lam):  # PositiveBias / CWeightCalc reset(): U(±1/√C)
        assert theta.abs().max() <= bound and theta.std() > bound / 3
    weights = module.guide_weight.detach().flatten()  # resnetdpp.lua ConvInit: N(0, √(2/9)), bias removed
    assert abs(weights.std().item() - math.sqrt(2 / 9)) < 0.05 and abs(weights.mean().item()) < 0.05
    assert not module.guide_bias.detach().any()
    default = poolbench.create("dpp_full_sym", channels, tier="vectorized")
    assert not default.log_alpha.detach().any() and torch.equal(default.guide_weight, poolbench.dpp.dpid_filter(channels))


def test_dpp_init_rejects_unknown_values_and_explicit_alpha_with_authors():
    with pytest.raises(ValueError, match="init must be one of default, authors, got 'kaiming'"):
        poolbench.create("dpp_lite_sym", 4, tier="vectorized", init="kaiming")
    with pytest.raises(ValueError, match="do not pass alpha or lam"):
        poolbench.create("dpp_lite_sym", 4, tier="vectorized", init="authors", alpha=0.5)
