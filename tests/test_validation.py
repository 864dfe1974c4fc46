"""Bad input gets a ValueError/TypeError that names the problem and the offending value."""
import pytest
import torch

import poolbench
from poolbench import functional as PF

ALL_TIERS = ("reference", "vectorized")


@pytest.fixture(params=ALL_TIERS)
def lite(request):
    return poolbench.create("dpp_lite_sym", 3, tier=request.param)


def test_wrong_rank(lite):
    with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\), got 3-D tensor of shape \(3, 8, 8\)"):
        lite(torch.randn(3, 8, 8))


def test_integer_dtype(lite):
    with pytest.raises(TypeError, match="floating point tensor, got dtype torch.int64"):
        lite(torch.ones(1, 3, 8, 8, dtype=torch.long))


def test_not_a_tensor(lite):
    with pytest.raises(TypeError, match="must be a torch.Tensor, got list"):
        lite([[1.0]])


def test_channel_mismatch(lite):
    with pytest.raises(ValueError, match="input has 4 channels but the pooler was built for 3"):
        lite(torch.randn(1, 4, 8, 8))


def test_window_larger_than_padded_input():
    module = poolbench.create("dpp_lite_sym", 3, kernel_size=5, stride=2, padding=1)
    with pytest.raises(ValueError, match="window of size 5 is larger than the padded input"):
        module(torch.randn(1, 3, 2, 8))


@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel_size=0), "kernel_size must be >= 1, got 0"),
    (dict(stride=-1), "stride must be >= 1, got -1"),
    (dict(kernel_size=2, padding=2), "padding must be at most kernel_size // 2 = 1, got padding=2"),
    (dict(padding=-1), "padding must be >= 0, got -1"),
    (dict(kernel_size=2.5), "kernel_size must be an int, got float 2.5"),
])
def test_bad_geometry(kwargs, message):
    error = TypeError if "must be an int" in message else ValueError
    with pytest.raises(error, match=message):
        poolbench.create("dpp_lite_sym", 3, **kwargs)
    with pytest.raises(error, match=message):
        PF.dpp(torch.randn(1, 3, 8, 8), 1.0, 1.0, **kwargs)


def test_bad_channels():
    with pytest.raises(ValueError, match="channels must be a positive int, got 0"):
        poolbench.create("dpp_lite_sym", 0)


def test_full_dpp_on_a_size_its_guide_cannot_match():
    module = poolbench.create("dpp_full_sym", 3)
    with pytest.raises(ValueError, match=r"3x3 guide gives a 4x4 map but pooling a 7x7 input .* gives 3x3"):
        module(torch.randn(1, 3, 7, 7))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(alpha=torch.ones(4)), ValueError, r"alpha must be a scalar or have shape \(3,\)"),
    (dict(lam=-1.0), ValueError, r"lam must be finite and >= 0 \(one per channel\), got -1"),
    (dict(alpha="big"), TypeError, "alpha must be a tensor or a number, got str"),
    (dict(eps2=0.0), ValueError, "eps2 must be a finite positive number, got 0.0"),
    (dict(guide=(torch.ones(3, 1, 2, 2), torch.ones(3))), ValueError, r"guide \(F, b\) must have shapes"),
])
def test_bad_functional_parameters(kwargs, error, message):
    arguments = dict(alpha=1.0, lam=1.0) | kwargs
    with pytest.raises(error, match=message):
        PF.dpp(torch.randn(1, 3, 8, 8), **arguments)


NON_FINITE = (float("nan"), float("inf"), float("-inf"))


@pytest.mark.parametrize("value", NON_FINITE, ids=str)
@pytest.mark.parametrize("option", ["alpha", "lam", "eps2"])
@pytest.mark.parametrize("tier", ["vectorized", "reference"])
def test_functional_rejects_non_finite_parameters(option, value, tier):
    """Guards against NaN α silently acting as α = 0 on some tiers and giving all-NaN output on others."""
    arguments = dict(alpha=1.0, lam=1.0) | {option: value}
    with pytest.raises(ValueError, match=f"{option} must be (a )?finite"):
        PF.dpp(torch.randn(1, 3, 8, 8), tier=tier, **arguments)


@pytest.mark.parametrize("option", ["alpha", "lam"])
def test_functional_rejects_one_non_finite_channel(option):
    """A per-channel tensor with one bad entry is rejected and the entry is named."""
    per_channel = torch.tensor([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match=f"{option} must be finite and >= 0 \\(one per channel\\), got nan"):
        PF.dpp(torch.randn(1, 3, 8, 8), **(dict(alpha=1.0, lam=1.0) | {option: per_channel}))


@pytest.mark.parametrize("option, value", [("alpha", 0.0), ("lam", -2.0), ("eps2", -1.0),
                                           *[(name, v) for name in ("alpha", "lam", "eps2") for v in NON_FINITE]])
def test_module_rejects_non_positive_or_non_finite_initial_values(option, value):
    with pytest.raises(ValueError, match=f"{option} must be a finite"):
        poolbench.create("dpp_lite_asym", 3, **{option: value})
