"""The fused C++/CUDA DPP extension (``impls/dpp_ext``): the cpp and cuda tiers and the op family.

What runs where:

* the CPU library is built once per session (``cpu_ext`` fixture; cached on
  disk across sessions) and the ``cpp`` tier runs the shared DPPTierTester and
  DPPCustomOpTester contracts (gradcheck, gradgradcheck, opcheck, torch.compile,
  FlopCounterMode, determinism, saved memory) plus the checks below (every
  variant and geometry against the float64 reference incl. α, λ, F, b
  gradients, fp16/bf16, determinism across thread counts, numerics at extremes);
* the CUDA kernels' device code is exercised on every machine through
  ``tests/dpp_ext_cuda_emulation.cpp`` (the .cu compiled as C++ with an
  emulated grid) against the same reference;
* ``test_cuda_source_compiles_with_nvcc`` builds the real CUDA library with nvcc
  (slow: about a minute on 2 cores); the ``cuda`` tier's own tests are marked
  ``gpu`` and run with ``pytest --device cuda -m "gpu or not slow" tests/test_dpp_ext.py``.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import poolbench
from poolbench import functional as PF
from poolbench.dpp import DPPArgs
from poolbench.tolerances import assert_close
from poolbench.verify.harness import judge, run_call
from poolbench.validation import pooled_size

from dpp_custom_op_tester import DPPCustomOpTester
from dpp_tester import DPPTierTester, random_dpp_parameters
from poolbench.impls.dpp_ext import ops
from poolbench.dpp import DPP_VARIANTS

ROOT = Path(__file__).resolve().parents[1]
#: The four deterministic DPP variants (S3DPP is DPP behind a random grid: tested with the stochastic poolers).
VARIANTS = tuple(variant.name for variant in DPP_VARIANTS if not variant.stochastic)

# (shape, kernel_size, stride, padding): the VGG window, the ResNet stem window, odd sizes,
# batch 1, overlapping windows (stride 1, as S3DPP), padding with k = 2, the generic path (k = 4, 5).
GEOMETRIES = (
    ((2, 3, 8, 8), 2, 2, 0),
    ((1, 4, 9, 7), 3, 2, 1),
    ((2, 3, 7, 9), 2, 2, 0),
    ((1, 2, 9, 9), 3, 1, 1),
    ((2, 3, 7, 9), 2, 1, 0),
    ((2, 3, 6, 10), 2, 2, 1),
    ((1, 2, 10, 10), 4, 3, 2),
    ((1, 2, 11, 11), 5, 2, 2),
    ((1, 2, 7, 9), 2, 2, 1),  # the one Full-DPP geometry whose guide is not inside the window (odd sizes, pad 1)
)


def fits_full(shape, k, s, p) -> bool:
    h, w = shape[-2:]
    return (pooled_size(h, k, s, p), pooled_size(w, k, s, p)) == (pooled_size(h, 3, s, 1), pooled_size(w, 3, s, 1))


def variant_cases():
    for (shape, k, s, p), name in itertools.product(GEOMETRIES, VARIANTS):
        if "full" in name and not fits_full(shape, k, s, p):
            continue
        yield pytest.param(name, shape, k, s, p, id=f"{name}-{'x'.join(map(str, shape))}-k{k}s{s}p{p}")


@pytest.fixture(scope="session")
def cpu_ext():
    """Build (or load from the on-disk cache) the CPU library once per session."""
    reason = ops.cpu_unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(reason)
    ops.load_cpu()
    return torch.ops.poolbench_dpp


@pytest.fixture(scope="session")
def cuda_emulation():
    """The CUDA kernels compiled as C++ with an emulated grid (see tests/dpp_ext_cuda_emulation.cpp)."""
    reason = ops.cpu_unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(reason)
    from torch.utils import cpp_extension

    return cpp_extension.load(
        name="poolbench_dpp_cuda_emulation",
        sources=[str(ROOT / "tests" / "dpp_ext_cuda_emulation.cpp")],
        extra_include_paths=[str(ops.CSRC)],
        extra_cflags=["-O1"],
        build_directory=str(ops.build_directory("cuda_emulation")),
        verbose=False,
    )


def dpp_args(name, shape, dtype=torch.float64, seed=0, scale=2.0):
    """Input and parameters for a variant: x (dtype), α, λ, guide (float64 leaves)."""
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)
    alpha, lam, guide = random_dpp_parameters(shape[1], "full" in name, seed=seed)
    return x, alpha, lam, guide


def forward_backward(fn, x, alpha, lam, guide, grad_seed=1):
    """y and the gradients of Σ g·y w.r.t. (x, α, λ[, F, b]) for a random g."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, alpha, lam, *(guide or ()))]
    y = fn(*leaves[:3], tuple(leaves[3:]) if guide is not None else None)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    grads = torch.autograd.grad(y, leaves, g.to(y.dtype))
    return y, grads


def compare_with_reference(tier, name, shape, k, s, p, dtype, scale_invariant=False, device="cpu"):
    """``tier`` against the float64 reference through the one equivalence harness (output and input
    gradient element-wise, α, λ, F, b norm-wise), on the same rounded input and upstream gradient."""
    x, alpha, lam, guide = dpp_args(name, shape, dtype)
    asym = "asym" in name

    def fn(input, alpha, lam, F=None, b=None, tier_name=tier):
        return PF.dpp(input, alpha, lam, k, s, p, asym=asym, guide=None if F is None else (F, b),
                      scale_invariant=scale_invariant, tier=tier_name)

    def run(tier_name, x_in):
        dev = device if tier_name != "reference" else "cpu"
        named = {"input": x_in, "alpha": alpha, "lam": lam, **(dict(zip("Fb", guide)) if guide else {})}
        grad_out = lambda shape: torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        return run_call(lambda **t: fn(**t, tier_name=tier_name), {n: v.to(dev) for n, v in named.items()}, grad_out)

    actual = run(tier, x)
    assert actual.output.dtype == x.dtype
    verdict = judge(actual, run("reference", x.double()), dtype)  # the reference sees the same rounded input
    assert verdict.ok, f"{tier} {name} {shape} k{k}s{s}p{p}: {verdict.problem}"


# ---------------------------------------------------------------------------
# The cpp tier: shared tier contract + op-level checks
# ---------------------------------------------------------------------------

class TestCppTier(DPPTierTester):
    """Smoke, cardinality, reference values/gradients, gradcheck, module == functional, non-contiguous, fp16/bf16."""

    tier = "cpp"

    @pytest.fixture(autouse=True)
    def _built(self, cpu_ext):
        return cpu_ext


class TestCppCustomOp(DPPCustomOpTester):
    """opcheck, fake kernels, gradcheck and double backward, compile, saved memory, determinism of the op."""

    tier, namespace = "cpp", ops.NAMESPACE
    log_params = True

    @pytest.fixture(autouse=True)
    def _built(self, cpu_ext):
        return cpu_ext


@pytest.mark.parametrize("name, shape, k, s, p", list(variant_cases()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_cpp_matches_reference(cpu_ext, name, shape, k, s, p, dtype):
    """Values and gradients w.r.t. x, α, λ, F, b for every variant and window geometry (SIMD and generic paths)."""
    compare_with_reference("cpp", name, shape, k, s, p, dtype)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("geometry", [((2, 3, 8, 8), 2, 2, 0), ((1, 2, 9, 9), 3, 2, 1)], ids=["k2s2", "k3s2p1"])
def test_cpp_scale_invariant_matches_reference(cpu_ext, name, geometry):
    """The authors' scale-invariant weights (c / mean c over the window) are supported, with gradients."""
    compare_with_reference("cpp", name, *geometry, torch.float32, scale_invariant=True)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["dpp_lite_sym", "dpp_full_asym"])
def test_cpp_half_precision_matches_reference(cpu_ext, name, half):
    """fp16/bf16 in and out, float32 inside: within the tolerance table, gradients included."""
    compare_with_reference("cpp", name, (2, 3, 8, 10), 2, 2, 0, half)
    compare_with_reference("cpp", name, (1, 2, 9, 9), 3, 2, 1, half)


def test_cpp_non_contiguous_input(cpu_ext):
    """Strided inputs give the same values and gradients as contiguous ones, bit for bit (channels-last input
    runs the NHWC kernel and keeps its format: tests/test_dpp_ext_channels_last.py)."""
    x, alpha, lam, guide = dpp_args("dpp_full_sym", (2, 3, 8, 8), torch.float32)

    def fn(x_, a_, l_, guide_):
        return PF.dpp(x_, a_, l_, 2, 2, 0, guide=guide_, tier="cpp")

    expected = forward_backward(fn, x, alpha, lam, guide)
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1])
    wide[..., ::2] = x
    for strided in (wide[..., ::2], x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)):
        assert not strided.is_contiguous()
        got = forward_backward(fn, strided, alpha, lam, guide)
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
        for a, b in zip(got[1], expected[1]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cpp_backward_is_deterministic_across_thread_counts(cpu_ext):
    """Per-channel gradients are reduced in a fixed order: bitwise equal runs, whatever the thread count."""
    x, alpha, lam, guide = dpp_args("dpp_full_sym", (4, 3, 16, 16), torch.float32)

    def fn(x_, a_, l_, guide_):
        return PF.dpp(x_, a_, l_, 3, 2, 1, guide=guide_, tier="cpp")

    threads = torch.get_num_threads()
    try:
        runs = []
        for count in (1, max(2, threads), 1):
            torch.set_num_threads(count)
            runs.append(forward_backward(fn, x, alpha, lam, guide)[1])
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert torch.equal(a, b)


def test_cpp_numerics_at_spec_extremes(cpu_ext):
    """Numerics: λ up to 200 and |x| up to 1e4 stay finite in float32; α = 0 gives no NaN; λ = 0 is avg pooling."""
    x = torch.randn(2, 3, 8, 8) * 1e4
    x[:, :, :4] = 0.0  # flat windows (after a ReLU) at large λ: the 0/0 case
    for alpha, lam in ((1.0, 200.0), (0.0, 200.0), (0.0, 1.0), (1e-3, 50.0)):
        xs = x.clone().requires_grad_()
        a = torch.full((3,), alpha, requires_grad=True)
        l = torch.full((3,), lam, requires_grad=True)
        y = PF.dpp(xs, a, l, tier="cpp")
        grads = torch.autograd.grad(y.sum(), [xs, a, l])
        assert torch.isfinite(y).all(), (alpha, lam)
        assert all(torch.isfinite(g).all() for g in grads), (alpha, lam)
        if alpha == 0.0:
            assert torch.equal(grads[1], torch.zeros(3)), "α = 0 has a zero α gradient, like the vectorized tier"
    x = torch.randn(2, 3, 9, 9)
    assert_close(PF.dpp(x, 1.0, 0.0, 3, 2, 1, tier="cpp"), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))


@pytest.mark.parametrize("name, k, s, p", [("dpp_lite_sym", 2, 2, 0), ("dpp_lite_sym", 3, 2, 1),
                                           ("dpp_full_sym", 3, 2, 1), ("dpp_lite_asym", 3, 2, 1),
                                           ("dpp_full_asym", 2, 2, 0)],
                         ids=["lite_sym_k2s2", "lite_sym_k3s2p1", "full_sym_k3s2p1", "lite_asym_k3s2p1",
                              "full_asym_k2s2"])
def test_cpp_specialised_window_loop_agrees_with_the_general_loop(cpu_ext, name, k, s, p):
    """Planes of moderate values take a window loop specialised for them (no rescaling of huge deviations, no
    log2 special cases); one tap of 1e20 sends its plane to the general loop.  Windows and input pixels away
    from that tap get the same values either way, and the choice per plane keeps results independent of
    which planes share a block (bitwise equal for 1 and 2 threads; Lite k3s2p1 was not, by an ulp, while the
    compiler fused multiply-adds differently in a loop's vector body and its scalar remainder)."""
    x, alpha, lam, guide = dpp_args(name, (2, 3, 12, 12), torch.float32)
    weight, bias = (t.float() for t in guide) if guide is not None else (None, None)
    args = (alpha.float(), lam.float(), weight, bias, k, s, p, "asym" in name, 1e-3, False)
    op = torch.ops.poolbench_dpp
    wild = x.clone()
    wild[0, 1, 0, 0] = 1e20  # touches output row 0 and input rows < 3 only (window and guide stencil)
    g = torch.randn(op.dpp_forward(x, *args).shape, generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    runs = {}
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            runs[count] = [(op.dpp_forward(t, *args), *op.dpp_backward(g, t, *args)) for t in (x, wild)]
    finally:
        torch.set_num_threads(threads)
    (y, gx, *_), (y_wild, gx_wild, *_) = runs[1]
    assert torch.isfinite(y_wild).all() and torch.isfinite(gx_wild).all()
    assert not torch.equal(y_wild[0, 1, 0], y[0, 1, 0]), "the huge tap changes the windows it is in"
    torch.testing.assert_close(y_wild[0, 1, 1:], y[0, 1, 1:], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx_wild[0, 1, 3:], gx[0, 1, 3:], rtol=1e-5, atol=1e-6)
    for plane in ((0, 0), (0, 2), (1, 1)):  # planes without the huge tap: the same loop, the same bits
        assert torch.equal(y_wild[plane], y[plane]) and torch.equal(gx_wild[plane], gx[plane])
    for one, two in zip(runs[1], runs[2]):
        for a, b in zip(one, two):
            assert torch.equal(a, b)


MAGNITUDE_CASES = (
    ("dpp_lite_sym", (1, 2, 6, 6), 2, 2, 0),   # interior windows: the CPU SIMD path, the CUDA fixed-window path
    ("dpp_full_asym", (1, 2, 7, 7), 3, 2, 1),  # border windows: the generic paths; Full guide; Asym clamp
)


def run_tier_at(tier, emulation, name, shape, k, s, p, dtype, scale):
    """(y, grads w.r.t. x, α, λ[, F, b]) of ``tier`` (or the emulated CUDA kernels) on x ~ scale·N(0, 1)."""
    x, alpha, lam, guide = dpp_args(name, shape, dtype, scale=scale)
    asym = "asym" in name
    if tier == "cuda-emulated":
        weight, bias = guide if guide is not None else (None, None)
        y = emulation.dpp_forward(x, alpha, lam, weight, bias, k, s, p, asym, 1e-3, False, False)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
        grads = emulation.dpp_backward(g, x, alpha, lam, weight, bias, k, s, p, asym, 1e-3, False, False)
        return y, grads[:5 if guide is not None else 3]

    def fn(x_, a_, l_, guide_):
        return PF.dpp(x_, a_, l_, k, s, p, asym=asym, guide=guide_, tier=tier)

    return forward_backward(fn, x.double() if tier == "reference" else x, alpha, lam, guide)


@pytest.mark.parametrize("scale", [1e20, 1e30], ids=["1e20", "1e30"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("tier", ["vectorized", "cpp", "cuda-emulated", "compiled"])
def test_huge_magnitudes_stay_finite_and_match_reference(request, tier, dtype, scale):
    """Guards against d² overflowing in the compute dtype (|x| = 1e20 gave NaN in float32, bf16 up to 1e37):
    outputs and every gradient are finite and within the tolerance table of the float64 reference,
    judged in each quantity's own unit: |x| for y and ∂/∂α, ∂/∂λ, ∂/∂F (they scale with x), 1 for
    ∂/∂x and ∂/∂b — so rounding noise that is ε·|x| in float32 is not mistaken for an error."""
    if tier == "compiled" and (dtype != torch.float32 or scale != 1e30):
        pytest.skip("one compiled case is enough to cover its branch-free path (each case compiles for seconds)")
    emulation = request.getfixturevalue("cuda_emulation") if tier == "cuda-emulated" else None
    if tier == "cpp":
        request.getfixturevalue("cpu_ext")
    for name, shape, k, s, p in MAGNITUDE_CASES:
        y, grads = run_tier_at(tier, emulation, name, shape, k, s, p, dtype, scale)
        y_ref, grads_ref = run_tier_at("reference", None, name, shape, k, s, p, dtype, scale)
        units = {"output": scale, "x": 1.0, "alpha": scale, "lam": scale, "F": scale, "b": 1.0}
        for label, got, expected in zip(units, (y, *grads), (y_ref, *grads_ref)):
            assert torch.isfinite(got).all(), f"{tier} {name} {label} at |x| ~ {scale:g}: not finite"
            magnitude = max(units[label], expected.abs().max().item())
            assert_close(got.double() / magnitude, expected / magnitude, dtype=dtype,
                         kind="output" if label == "output" else "grad", msg=f"{tier} {name} {label} at {scale:g}")


def test_cpp_rejects_other_devices():
    """The cpp tier names the device it runs on instead of failing inside the dispatcher."""
    x = torch.randn(1, 2, 4, 4, device="meta")
    with pytest.raises(ValueError, match="cpp DPP tier runs on cpu"):
        ops.dpp(x, torch.ones(2), torch.ones(2), None, DPPArgs(2, 2, 0), device_type="cpu")


def test_import_builds_nothing_and_cuda_availability_is_cheap(tmp_path):
    """Importing the tiers compiles nothing, and asking the cuda tier's `available` builds nothing either
    (the CUDA build takes minutes; the cpp tier's hook does try its build, see test_dpp_ext_build.py)."""
    code = (
        "import poolbench.impls.dpp_cpp_cuda\n"
        "from poolbench.impls.dpp_ext import ops\n"
        "print(repr(ops.cuda_unavailable_reason('cuda')))\n"
    )
    env = dict(os.environ, POOLBENCH_CACHE_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert not any(tmp_path.rglob("*.so")) and not any(tmp_path.rglob("*.o"))
    if not torch.cuda.is_available():
        assert "CUDA" in result.stdout  # a reason, not an exception


# ---------------------------------------------------------------------------
# poolbench layerbench (the benchmark itself is a command, not a timed test: these only check it works)
# ---------------------------------------------------------------------------

def test_layerbench_runs_and_reports_ratios(cpu_ext, monkeypatch):
    """Every requested tier gets a row with ratios to both baselines; a failing cell keeps its error and the run goes on."""
    from poolbench.run import layerbench

    real_create = layerbench.registry.create

    def create(name, *args, tier=None, **kwargs):
        if tier == "vectorized" and name.startswith("dpp"):  # not the avg comparator, a registry pooler too
            raise RuntimeError("simulated failure")
        return real_create(name, *args, tier=tier, **kwargs)

    monkeypatch.setattr(layerbench.registry, "create", create)
    rows, meta = layerbench.run_layerbench("cpu", batch=1, resolution=32, tiers=["cpp", "vectorized", "cuda"],
                                           layers=[4, 5], min_run_time=0.01, repeats=2, statistic="min")
    by_name = {(row.layer, row.pooler): row for row in rows}
    assert set(by_name) == {(layer, pooler) for layer in (4, 5) for pooler in
                            ("avg_pool2d", "max_pool2d", "dpp_lite_sym[cpp]", "dpp_lite_sym[vectorized]")}
    assert "cuda" in meta["skipped_tiers"]  # unavailable tiers are listed with their reason, not run
    for layer in (4, 5):
        avg, cpp = by_name[(layer, "avg_pool2d")], by_name[(layer, "dpp_lite_sym[cpp]")]
        assert avg.fwd_vs_avg == 1.0 and avg.saved_vs_avg == 1.0
        assert cpp.error == "" and cpp.fwd_vs_avg > 0 and cpp.fwdbwd_vs_max > 0 and cpp.fwd_bandwidth > 0
        # the fused op saves only its input (what avg_pool2d saves) plus the per-channel α, λ
        assert cpp.saved_bytes <= avg.saved_bytes + 2 * cpp.shape[1] * 4
        assert "simulated failure" in by_name[(layer, "dpp_lite_sym[vectorized]")].error
    report = layerbench.to_markdown(rows, meta)
    assert "| dpp_lite_sym[cpp]" in report and "fwd / avg" in report and "simulated failure" in report


def test_layerbench_resnet50_layers_use_their_own_windows(cpu_ext):
    """--model resnet50: the stem is pooled 3×3/2 pad 1 (baselines included), block inputs 2×2/2."""
    from poolbench.run import layerbench
    from poolbench.measure.shapes import pool_layers

    specs = pool_layers("resnet50", batch=1, resolution=224)
    assert specs[0] == ((1, 64, 112, 112), (3, 2, 1))
    assert [shape for shape, _ in specs[1:]] == [(1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14)]
    assert {window for _, window in specs[1:]} == {(2, 2, 0)}
    rows, meta = layerbench.run_layerbench("cpu", batch=1, resolution=32, tiers=["cpp"], layers=[1],
                                           min_run_time=0.01, repeats=1, model="resnet50")
    assert meta["model"] == "resnet50" and meta["windows"] == ["2×2/2 pad 0", "3×3/2 pad 1"]
    assert {row.pooler for row in rows} == {"avg_pool2d", "max_pool2d", "dpp_lite_sym[cpp]"}
    assert all(row.error == "" and row.fwd_vs_avg > 0 for row in rows)
    assert "ResNet-50 pooling layers" in layerbench.to_markdown(rows, meta)
    with pytest.raises(ValueError, match="unknown model"):
        pool_layers("alexnet")


def test_layerbench_peak_bandwidth_lookup():
    from poolbench.run.layerbench import peak_bandwidth, peak_bandwidth_for

    assert peak_bandwidth_for("NVIDIA H100 80GB HBM3") == 3.35e12
    assert peak_bandwidth_for("NVIDIA H100 PCIe") == 2.0e12
    assert peak_bandwidth_for("NVIDIA H200") == 4.8e12
    assert peak_bandwidth_for("NVIDIA GH200 480GB") == 4.0e12
    assert peak_bandwidth_for("Some Future GPU") is None
    assert peak_bandwidth("cpu") is None


def test_layerbench_cli_rejects_bad_arguments():
    from poolbench.cli import main

    assert main(["layerbench", "--device", "cpu", "--batch", "0"]) == 2
    assert main(["layerbench", "--device", "cpu", "--variants", "not_a_variant"]) == 2


# ---------------------------------------------------------------------------
# The CUDA kernels' device code, emulated on the CPU
# ---------------------------------------------------------------------------

EMULATED_GEOMETRIES = GEOMETRIES[:2] + GEOMETRIES[3:4] + GEOMETRIES[5:7]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_cuda_kernels_emulated_match_reference(cuda_emulation, name, dtype):
    """Forward, the window/stencil/gather backward kernels and the partial-sum reduction vs the reference;
    with α, λ given directly and as logs (log_params: the module's stored θ, gradients w.r.t. θ)."""
    for (shape, k, s, p), log_params in itertools.product(EMULATED_GEOMETRIES, (False, True)):
        if "full" in name and not fits_full(shape, k, s, p):
            continue
        for scale_invariant in (False, True):
            x, alpha, lam, guide = dpp_args(name, shape, dtype)
            weight, bias = guide if guide is not None else (None, None)
            asym = "asym" in name
            a_in, l_in = (alpha.log(), lam.log()) if log_params else (alpha, lam)
            y = cuda_emulation.dpp_forward(x, a_in, l_in, weight, bias, k, s, p, asym, 1e-3, scale_invariant,
                                           log_params)
            g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
            grads = cuda_emulation.dpp_backward(g, x, a_in, l_in, weight, bias, k, s, p, asym, 1e-3, scale_invariant,
                                                log_params)
            if log_params:  # ∂L/∂θ = α·∂L/∂α, λ·∂L/∂λ
                grads = (grads[0], grads[1] / alpha, grads[2] / lam, *grads[3:])

            def fn(x_, a_, l_, guide_):
                return PF.dpp(x_, a_, l_, k, s, p, asym=asym, guide=guide_, scale_invariant=scale_invariant,
                              tier="reference")

            leaves = [t.detach().clone().requires_grad_() for t in (x.double(), alpha, lam, *(guide or ()))]
            y_ref = fn(*leaves[:3], tuple(leaves[3:]) if guide else None)
            grads_ref = torch.autograd.grad(y_ref, leaves, g.double())
            label = f"{name} {shape} k{k}s{s}p{p} scale_invariant={scale_invariant}"
            assert_close(y, y_ref, dtype=dtype, msg=label)
            grads = grads if guide is not None else grads[:3]
            for which, got, expected in zip(("x", "alpha", "lam", "F", "b"), grads, grads_ref):
                assert_close(got, expected, dtype=dtype, kind="grad", msg=f"{label}: grad of {which}")


# ---------------------------------------------------------------------------
# The real CUDA library: compiled here with nvcc, run where a GPU is lent
# ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def cuda_ext():
    """nvcc build of the CUDA library (once per session; cached on disk). Skips with the reason where impossible."""
    reason = ops.cuda_unavailable_reason("cuda", need_device=False)
    if reason is not None:
        pytest.skip(reason)
    ops.load_cuda()
    return torch.ops.poolbench_dpp


@pytest.mark.slow
def test_cuda_source_compiles_with_nvcc(cuda_ext):
    """The .cu builds with nvcc and registers CUDA kernels for both ops (no GPU needed)."""
    for op in ("dpp_forward", "dpp_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"poolbench_dpp::{op}", "CUDA")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"poolbench_dpp::{op}", "CPU")


@pytest.mark.gpu
class TestCudaTier(DPPTierTester):
    """The shared tier contract on the GPU (``pytest --device cuda -m gpu``)."""

    tier = "cuda"


@pytest.mark.gpu
class TestCudaCustomOp(DPPCustomOpTester):
    """The op-family contract on the GPU; determinism at a VGG-16-sized layer (per-channel reduction)."""

    tier, namespace = "cuda", ops.NAMESPACE
    log_params = True
    determinism_shape = (8, 64, 56, 56)


@pytest.mark.gpu
@pytest.mark.parametrize("name, shape, k, s, p", list(variant_cases()))
def test_cuda_matches_reference(name, shape, k, s, p):
    compare_with_reference("cuda", name, shape, k, s, p, torch.float32, device="cuda")
    compare_with_reference("cuda", name, shape, k, s, p, torch.float64, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", VARIANTS)
def test_cuda_half_precision_and_scale_invariant(name, half):
    compare_with_reference("cuda", name, (2, 3, 8, 10), 2, 2, 0, half, device="cuda")
    compare_with_reference("cuda", name, (1, 2, 9, 9), 3, 2, 1, torch.float32, scale_invariant=True, device="cuda")


@pytest.mark.gpu
def test_cuda_agrees_with_cpp_at_vgg_shape(cpu_ext):
    """Same op, same maths on both devices: the GPU and CPU kernels agree on a VGG-16 layer (float32)."""
    module = poolbench.create("dpp_lite_sym", 128, 2, 2, 0, tier="cpp", lam=3.0)
    gpu_module = poolbench.create("dpp_lite_sym", 128, 2, 2, 0, tier="cuda", device="cuda", lam=3.0)
    x = torch.randn(2, 128, 112, 112)
    assert_close(gpu_module(x.cuda()).cpu(), module(x))
