"""The cpp tier on channels-last input: the CPU kernel's NHWC path (``impls/dpp_ext/csrc/cpu/dpp_kernel_nhwc.cpp``).

Networks trained in channels-last hand the pooling op NHWC tensors; the op then runs a kernel
vectorised over channels and returns y and ∂x in channels-last (it used to copy to NCHW and
return NCHW).  These check that the format is kept (and NCHW input is left as it was), that
values and every gradient match the float64 reference and the NCHW path within the equivalence
tolerances, that the backward does not depend on the thread count, and that the fake kernels
describe the real strides (opcheck's fake-tensor cross-check compares them).
"""
from __future__ import annotations

import itertools

import pytest
import torch

import poolbench
from poolbench import functional as PF
from poolbench.dpp import DPP_VARIANTS, DPPArgs
from poolbench.dpp_custom_op import keeps_channels_last
from poolbench.impls.dpp_ext import ops
from poolbench.verify.harness import judge, run_call

from dpp_tester import guide_fits, random_dpp_parameters

VARIANTS = tuple(variant.name for variant in DPP_VARIANTS if not variant.stochastic)
CHANNELS_LAST = torch.channels_last

# (shape, kernel_size, stride, padding): VGG's window on even sizes (Full-DPP's guide fits), the ResNet stem
# window on odd sizes with padding (border windows of 4 and 6 taps); batch 2, channel counts that are no
# multiple of a vector's width.
GEOMETRIES = (((2, 5, 8, 10), 2, 2, 0), ((2, 5, 9, 7), 3, 2, 1))
# Geometries of the per-channel generic loop (tap counts outside 1, 2, 3, 4, 6, 9; padding with k = 2,
# overlapping windows): Lite-DPP and, where its guide fits, Full-DPP.
GENERIC_GEOMETRIES = (((1, 3, 11, 11), 5, 2, 2), ((1, 4, 10, 10), 4, 3, 2), ((2, 3, 7, 9), 2, 1, 0),
                      ((1, 4, 7, 9), 2, 2, 1))


@pytest.fixture(scope="module", autouse=True)
def cpu_ext():
    """Build (or load from the on-disk cache) the CPU library."""
    reason = ops.cpu_unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(reason)
    ops.load_cpu()


def inputs(name, shape, dtype, seed=0):
    """Named inputs of ``PF.dpp`` for a variant: the pooled input (channels-last) and float64 α, λ (F, b)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    alpha, lam, guide = random_dpp_parameters(shape[1], "full" in name, seed=seed)
    named = {"input": x.to(dtype).contiguous(memory_format=CHANNELS_LAST), "alpha": alpha, "lam": lam}
    return {**named, **(dict(zip("Fb", guide)) if guide else {})}


def run(name, named, k, s, p, tier="cpp", scale_invariant=False):
    """y and the gradients of Σ g·y w.r.t. every named input (fixed upstream gradient g)."""
    def fn(input, alpha, lam, F=None, b=None):
        return PF.dpp(input, alpha, lam, k, s, p, asym="asym" in name, guide=None if F is None else (F, b),
                      scale_invariant=scale_invariant, tier=tier)

    def grad_out(shape):
        return torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    return run_call(fn, named, grad_out)


def nchw(named):
    return {n: v.contiguous() for n, v in named.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("name", ["dpp_lite_sym", "dpp_full_asym"])
def test_channels_last_input_gives_channels_last_output_and_input_gradient(name, dtype):
    """The op keeps the input's memory format: channels-last y and ∂x for channels-last x, NCHW for NCHW."""
    named = inputs(name, (2, 5, 9, 7), dtype)
    result = run(name, named, 3, 2, 1)
    for label, tensor in (("y", result.output), ("dx", result.grads["input"])):
        assert tensor.is_contiguous(memory_format=CHANNELS_LAST) and not tensor.is_contiguous(), label
        assert tensor.dtype == dtype, label
    result = run(name, nchw(named), 3, 2, 1)
    assert result.output.is_contiguous() and result.grads["input"].is_contiguous()


def test_module_in_channels_last_returns_channels_last():
    """What `--channels-last` runs: a module moved to channels-last, called on channels-last input."""
    x = torch.randn(1, 8, 14, 14).contiguous(memory_format=CHANNELS_LAST)
    for name in ("dpp_lite_sym", "dpp_full_sym"):
        module = poolbench.create(name, 8, 2, 2, 0, tier="cpp").to(memory_format=CHANNELS_LAST)
        for _ in range(2):  # the first call validates, the second takes the bound fast path
            y = module(x)
            assert y.is_contiguous(memory_format=CHANNELS_LAST) and not y.is_contiguous(), name
        torch.testing.assert_close(y, module(x.contiguous()), rtol=1e-5, atol=1e-6)


def test_single_channel_and_single_pixel_inputs_take_the_nchw_path():
    """C = 1 or H·W = 1: channels-last and NCHW are the same layout; the output is NCHW contiguous."""
    for shape in ((2, 1, 6, 6), (2, 3, 1, 1)):
        x = torch.randn(shape).contiguous(memory_format=CHANNELS_LAST)
        assert not keeps_channels_last(x, ("cpu",))
        k = 2 if shape[2] > 1 else 1
        assert PF.dpp(x, 1.0, 1.0, k, k, 0, tier="cpp").is_contiguous()


def variant_geometries(geometries):
    for (shape, k, s, p), name in itertools.product(geometries, VARIANTS):
        if "full" not in name or guide_fits(shape, k, s, p):
            yield pytest.param(name, shape, k, s, p, id=f"{name}-{'x'.join(map(str, shape))}-k{k}s{s}p{p}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name, shape, k, s, p", list(variant_geometries(GEOMETRIES)))
def test_channels_last_matches_reference_and_nchw_path(name, shape, k, s, p, dtype):
    """y and the gradients w.r.t. x, α, λ (F, b) against the float64 reference and the NCHW kernel,
    within the equivalence contract's tolerances for the dtype."""
    named = inputs(name, shape, dtype)
    got = run(name, named, k, s, p)
    reference = run(name, {n: v.double() for n, v in nchw(named).items()}, k, s, p, tier="reference")
    verdict = judge(got, reference, dtype)
    assert verdict.ok, f"channels-last vs reference: {verdict.problem}"
    verdict = judge(got, run(name, nchw(named), k, s, p), dtype)
    assert verdict.ok, f"channels-last vs NCHW path: {verdict.problem}"


@pytest.mark.parametrize("name", VARIANTS)
def test_channels_last_scale_invariant_matches_reference(name):
    """The authors' scale-invariant option runs on the NHWC path too, gradients included."""
    shape, k, s, p = GEOMETRIES[1]
    named = inputs(name, shape, torch.float32)
    reference = run(name, {n: v.double() for n, v in nchw(named).items()}, k, s, p, tier="reference",
                    scale_invariant=True)
    verdict = judge(run(name, named, k, s, p, scale_invariant=True), reference, torch.float32)
    assert verdict.ok, verdict.problem


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name, shape, k, s, p", list(variant_geometries(GENERIC_GEOMETRIES)))
def test_channels_last_generic_windows_match_reference(name, shape, k, s, p, dtype):
    """Windows whose tap count has no vectorised instantiation, and float64 (the per-channel loop)."""
    named = inputs(name, shape, dtype)
    got = run(name, named, k, s, p)
    assert got.output.is_contiguous(memory_format=CHANNELS_LAST)
    reference = run(name, {n: v.double() for n, v in nchw(named).items()}, k, s, p, tier="reference")
    verdict = judge(got, reference, dtype)
    assert verdict.ok, verdict.problem


@pytest.mark.parametrize("name, geometry", [("dpp_full_sym", ((3, 19, 15, 13), 3, 2, 1)),
                                            ("dpp_lite_asym", ((2, 21, 12, 16), 2, 2, 0))])
def test_channels_last_is_bitwise_equal_across_thread_counts(name, geometry):
    """Backward bands of fixed rows, reduced in a fixed order: 1 and 2 threads give the same bits."""
    shape, k, s, p = geometry
    named = inputs(name, shape, torch.float32)
    threads = torch.get_num_threads()
    try:
        runs = []
        for count in (1, 2, 1):
            torch.set_num_threads(count)
            runs.append(run(name, named, k, s, p))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        assert torch.equal(other.output, runs[0].output)
        assert other.grads.keys() == runs[0].grads.keys()
        for label in runs[0].grads:
            assert torch.equal(other.grads[label], runs[0].grads[label]), label


@pytest.mark.parametrize("log_params", [False, True], ids=["alpha_lam", "log_params"])
@pytest.mark.parametrize("full", [False, True], ids=["lite", "full"])
def test_opcheck_channels_last(full, log_params):
    """Schema, fake kernels (their strides cross-checked against the real ones), autograd and AOT dispatch
    on channels-last input, with a channels-last and an NCHW upstream gradient."""
    op = torch.ops.poolbench_dpp
    settings = (*DPPArgs(3, 2, 1, asym=True).op_arguments(), log_params)
    named = inputs("dpp_full_sym" if full else "dpp_lite_sym", (2, 3, 6, 8), torch.float64)
    x, alpha, lam = named["input"], named["alpha"], named["lam"]
    if log_params:
        alpha, lam = alpha.log(), lam.log()
    weight, bias = (named["F"], named["b"]) if full else (None, None)
    tensors = [t if t is None else t.detach().requires_grad_() for t in (x, alpha, lam, weight, bias)]
    torch.library.opcheck(op.dpp_forward.default, (*tensors, *settings))
    detached = tuple(t if t is None else t.detach() for t in tensors)
    grad = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    for upstream in (grad.contiguous(memory_format=CHANNELS_LAST), grad):
        torch.library.opcheck(op.dpp_backward.default, (upstream, *detached, *settings))


def test_fake_kernels_describe_channels_last_strides():
    """torch.compile traces with the fake kernels: their output strides must be the real kernel's."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = torch.ops.poolbench_dpp
    settings = DPPArgs(2, 2, 0).op_arguments()
    named = inputs("dpp_full_sym", (2, 4, 8, 6), torch.float32)
    real = (named["input"], named["alpha"].float(), named["lam"].float(), named["F"].float(), named["b"].float())
    y = op.dpp_forward(*real, *settings)
    grads = op.dpp_backward(torch.ones_like(y), *real, *settings)
    mode = FakeTensorMode()
    fake = tuple(mode.from_tensor(t) for t in real)
    with mode:
        fake_y = op.dpp_forward(*fake, *settings)
        fake_grads = op.dpp_backward(torch.ones_like(fake_y), *fake, *settings)
    assert fake_y.stride() == y.stride() and y.is_contiguous(memory_format=CHANNELS_LAST)
    assert fake_grads[0].stride() == grads[0].stride() and grads[0].is_contiguous(memory_format=CHANNELS_LAST)


def test_channels_last_numerics_at_extremes():
    """As the NCHW kernel: λ up to 200 and |x| up to 1e4 (flat windows at large λ: the 0/0 case) and |x| ~ 1e30
    stay finite, α = 0 has a zero α gradient, λ = 0 is avg_pool2d (count_include_pad=False)."""
    x = torch.randn(2, 3, 8, 8) * 1e4
    x[:, :, :4] = 0.0
    for scale in (1.0, 1e26):
        for alpha, lam in ((1.0, 200.0), (0.0, 200.0), (0.0, 1.0), (1e-3, 50.0)):
            xs = (x * scale).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
            a = torch.full((3,), alpha, requires_grad=True)
            l = torch.full((3,), lam, requires_grad=True)
            y = PF.dpp(xs, a, l, 3, 2, 1, tier="cpp")
            grads = torch.autograd.grad(y.sum(), [xs, a, l])
            assert torch.isfinite(y).all(), (scale, alpha, lam)
            assert all(torch.isfinite(g).all() for g in grads), (scale, alpha, lam)
            if alpha == 0.0:
                assert torch.equal(grads[1], torch.zeros(3))
    x = torch.randn(2, 3, 9, 9).contiguous(memory_format=CHANNELS_LAST)
    torch.testing.assert_close(PF.dpp(x, 1.0, 0.0, 3, 2, 1, tier="cpp"),
                               torch.nn.functional.avg_pool2d(x, 3, 2, 1, count_include_pad=False))


def test_torch_compile_channels_last_matches_eager():
    """Inside torch.compile(fullgraph=True) the op keeps the format too: same strides, values and gradients."""
    torch._dynamo.reset()
    module = poolbench.create("dpp_full_asym", 8, 2, 2, 0, tier="cpp", lam=2.0)
    x = torch.randn(2, 8, 10, 12).contiguous(memory_format=CHANNELS_LAST)

    def step(fn):
        xs = x.clone().requires_grad_()
        y = fn(xs)
        return y, torch.autograd.grad(y.square().sum(), [xs, *module.parameters()])

    eager, compiled = step(module), step(torch.compile(module, fullgraph=True))
    assert compiled[0].stride() == eager[0].stride() and eager[0].is_contiguous(memory_format=CHANNELS_LAST)
    assert compiled[1][0].stride() == eager[1][0].stride()
    torch.testing.assert_close(compiled[0], eager[0])
    for got, want in zip(compiled[1], eager[1]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["dpp_lite_asym", "dpp_full_sym"])
def test_channels_last_gradcheck_float64(name):
    """The NHWC backward against finite differences, w.r.t. x, α, λ and (Full) F, b."""
    named = inputs(name, (1, 3, 5, 7), torch.float64)
    leaves = [t.detach().requires_grad_() for t in named.values()]

    def function(x, alpha, lam, *guide):
        return PF.dpp(x, alpha, lam, 3, 2, 1, asym="asym" in name, guide=guide or None, tier="cpp")

    assert leaves[0].is_contiguous(memory_format=CHANNELS_LAST) and not leaves[0].is_contiguous()
    assert torch.autograd.gradcheck(function, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)
