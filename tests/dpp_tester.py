"""The abstract tester every DPP tier inherits (kornia's BaseTester pattern).

A tier's test file only sets ``tier`` (and, if needed, ``dtypes``); it then
gets smoke, cardinality, values vs the float64 reference, gradients vs the
reference, gradcheck, module == functional and non-contiguous input tests for
all four variants for free.
"""
from __future__ import annotations

import pytest
import torch

import poolbench
from poolbench import functional as PF
from poolbench.verify.check import CASES, GRADCHECK_CASES, check_equivalence, check_gradients
from poolbench.dpp import check_full_guide
from poolbench.tolerances import assert_close

VARIANTS = ("dpp_lite_sym", "dpp_lite_asym", "dpp_full_sym", "dpp_full_asym")


def random_dpp_parameters(channels: int, full: bool, dtype=torch.float64, device="cpu", seed: int = 0):
    """α ∈ [0.1, 2], λ ∈ [0, 3] per channel and, for Full-DPP, a random 3×3 guide."""
    generator = torch.Generator().manual_seed(seed)
    alpha = torch.rand(channels, generator=generator, dtype=torch.float64) * 1.9 + 0.1
    lam = torch.rand(channels, generator=generator, dtype=torch.float64) * 3
    guide = None
    if full:
        guide = (torch.randn(channels, 1, 3, 3, generator=generator, dtype=torch.float64) * 0.3,
                 torch.randn(channels, generator=generator, dtype=torch.float64) * 0.1)
        guide = tuple(t.to(device=device, dtype=dtype) for t in guide)
    return alpha.to(device=device, dtype=dtype), lam.to(device=device, dtype=dtype), guide


def guide_fits(shape, kernel_size, stride, padding) -> bool:
    """Whether Full-DPP's 3×3 guide fits the pooled grid of an input of ``shape`` with this window."""
    try:
        check_full_guide(shape[2], shape[3], kernel_size, stride, padding)
        return True
    except ValueError:
        return False


def fits_full_guide(case) -> bool:
    return guide_fits(case.shape, case.kernel_size, case.stride, case.padding)


class DPPTierTester:
    """Subclass and set ``tier``; every test below then runs against that tier."""

    tier: str = ""
    #: Cases compared with the reference (subclasses of slow tiers may trim this).
    cases = CASES
    gradcheck_cases = GRADCHECK_CASES

    @pytest.fixture(autouse=True)
    def _require_tier(self, device):
        reason = poolbench.get_spec("dpp_lite_sym", self.tier).unavailable_reason(device)
        if reason is not None:
            pytest.skip(reason)

    def build(self, name, case, device, **options):
        return poolbench.create(name, case.shape[1], case.kernel_size, case.stride, case.padding,
                                tier=self.tier, device=device, **options)

    @pytest.mark.parametrize("name", VARIANTS)
    def test_smoke_and_cardinality(self, name, device):
        for case in self.cases:
            if "full" in name and not fits_full_guide(case):
                continue
            module = self.build(name, case, device)
            x = torch.randn(case.shape, device=device)
            y = module(x)
            assert y.shape[:2] == x.shape[:2]
            assert y.shape[2:] == module.output_size(*x.shape[2:]), str(case)
            assert y.dtype == x.dtype and y.device == x.device

    @pytest.mark.parametrize("name", VARIANTS + ("s3dpp_lite_sym",))
    def test_values_and_gradients_match_reference(self, name, device, dtype):
        for case in self.cases:
            result = check_equivalence(name, self.tier, case, device, dtype)
            if "full" in name and not fits_full_guide(case):
                assert result.status == "n/a", result
                continue
            assert result.status == "pass", f"{case}: {result}"

    @pytest.mark.parametrize("name", VARIANTS)
    def test_gradcheck_float64(self, name, device):
        for case in self.gradcheck_cases:
            result = check_gradients(name, self.tier, case, device)
            assert result.status in ("pass", "n/a"), f"{case}: {result}"

    @pytest.mark.parametrize("name", VARIANTS)
    def test_module_equals_functional(self, name, device):
        case = CASES[1]
        module = self.build(name, case, device, alpha=0.7, lam=2.5)
        x = torch.randn(case.shape, device=device)
        expected = PF.dpp(x, module.alpha, module.lam, case.kernel_size, case.stride, case.padding,
                          asym=module.asym, guide=module.guide, tier=self.tier)
        assert_close(module(x), expected)

    def test_non_contiguous_input(self, device):
        case = CASES[0]
        module = self.build("dpp_full_sym", case, device)
        x = torch.randn(case.shape[0], case.shape[2], case.shape[3], case.shape[1], device=device).permute(0, 3, 1, 2)
        assert not x.is_contiguous()
        assert_close(module(x), module(x.contiguous()))
        sliced = torch.randn(case.shape[0], case.shape[1], case.shape[2], case.shape[3] * 2, device=device)[..., ::2]
        assert_close(module(sliced), module(sliced.contiguous()))

    @pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
    def test_half_precision_accumulates_in_float32(self, half, device):
        case = CASES[0]
        alpha, lam, guide = random_dpp_parameters(case.shape[1], full=True, dtype=torch.float32, device=device)
        x = torch.randn(case.shape, device=device)
        y = PF.dpp(x.to(half), alpha, lam, guide=guide, tier=self.tier)
        assert y.dtype == half
        expected = PF.dpp(x.to(half).double().cpu(), alpha.double().cpu(), lam.double().cpu(),
                          guide=tuple(t.double().cpu() for t in guide), tier="reference")
        assert_close(y.cpu(), expected, dtype=half)
