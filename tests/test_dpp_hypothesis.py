"""Property-based: the vectorized tier equals the reference for any valid geometry and parameters."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poolbench import functional as PF
from poolbench.tolerances import assert_close


@st.composite
def dpp_problems(draw):
    kernel_size = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, kernel_size // 2))
    height = draw(st.integers(max(1, kernel_size - 2 * padding), 9))
    width = draw(st.integers(max(1, kernel_size - 2 * padding), 9))
    channels = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(draw(st.integers(1, 2)), channels, height, width, generator=generator, dtype=torch.float64)
    x = x * draw(st.sampled_from([1e-3, 1.0, 30.0]))
    alpha = torch.rand(channels, generator=generator, dtype=torch.float64) * draw(st.sampled_from([0.0, 1e-3, 1.0, 5.0]))
    lam = torch.rand(channels, generator=generator, dtype=torch.float64) * draw(st.sampled_from([0.0, 1.0, 8.0]))
    return x, alpha, lam, kernel_size, stride, padding, draw(st.booleans()), draw(st.booleans())


@settings(max_examples=60, deadline=None)
@given(dpp_problems())
def test_vectorized_matches_reference_for_any_lite_geometry(problem):
    x, alpha, lam, kernel_size, stride, padding, asym, scale_invariant = problem
    arguments = dict(kernel_size=kernel_size, stride=stride, padding=padding, asym=asym, scale_invariant=scale_invariant)
    expected = PF.dpp(x, alpha, lam, tier="reference", **arguments)
    assert_close(PF.dpp(x, alpha, lam, tier="vectorized", **arguments), expected)
    assert expected.shape[-2:] == ((x.shape[-2] + 2 * padding - kernel_size) // stride + 1,
                                   (x.shape[-1] + 2 * padding - kernel_size) // stride + 1)
