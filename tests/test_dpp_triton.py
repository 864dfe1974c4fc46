"""The triton DPP tier: the kernels against the float64 reference, on CPU through Triton's interpreter.

Triton fixes at kernel definition whether it compiles for a GPU or interprets
on the CPU (``TRITON_INTERPRET=1``), so the kernels cannot be interpreted in a
process that already compiled them.  Hence two modes of this one file:

* in the normal run, :func:`test_kernels_in_triton_interpreter` re-runs this
  file in a subprocess with ``TRITON_INTERPRET=1`` (every kernel test then runs
  on small CPU tensors and must pass there);
* every kernel test uses the ``device`` fixture and skips with the tier's reason
  where it cannot run, so in that subprocess (CPU, interpreted) and on a GPU
  (``pytest --device cuda tests/test_dpp_triton.py``) the same tests run.

GPU-only checks (VGG-sized layers, torch.compile, float64 on the GPU) are
marked ``gpu``: ``pytest --device cuda -m gpu tests/test_dpp_triton.py``.
"""
from __future__ import annotations

import importlib.util
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
from poolbench.dpp import DPP_VARIANTS, dpid_filter
from poolbench.tolerances import assert_close, tolerance

try:  # the shared tier contract (smoke, reference, gradcheck, module == functional, ...)
    from dpp_tester import DPPTierTester
except ImportError:  # pragma: no cover - only while the shared tester is absent
    DPPTierTester = None

from dpp_custom_op_tester import GRADCHECK_GEOMETRIES, DPPCustomOpTester
from dpp_tester import guide_fits
from poolbench.impls import dpp_triton
from poolbench.verify.harness import PassOutputs, judge

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("host_cost", ROOT / "scripts" / "host_cost.py")
host_cost = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(host_cost)
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
HAS_TRITON = importlib.util.find_spec("triton") is not None
VARIANTS = tuple(v for v in DPP_VARIANTS if not v.stochastic)


@pytest.fixture
def tier_device(device):
    """The test device, or a skip with the tier's own reason where the triton tier cannot run on it."""
    reason = poolbench.get_spec("dpp_lite_sym", "triton").unavailable_reason(device)
    if reason is not None:
        pytest.skip(reason)
    return device


def dpp_inputs(shape, full, dtype=torch.float64, seed=0, alpha=None, lam=None):
    """Random input and per-channel parameters (float64, CPU) for the reference."""
    generator = torch.Generator().manual_seed(seed)
    channels = shape[1]
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    alpha = torch.rand(channels, generator=generator, dtype=torch.float64) * 1.9 + 0.1 if alpha is None else alpha
    lam = torch.rand(channels, generator=generator, dtype=torch.float64) * 3 if lam is None else lam
    guide = None
    if full:
        guide = (dpid_filter(channels, torch.float64) + 0.2 * torch.randn(channels, 1, 3, 3, generator=generator,
                                                                          dtype=torch.float64),
                 0.1 * torch.randn(channels, generator=generator, dtype=torch.float64))
    return x, alpha, lam, guide


def run_dpp(tier, x, alpha, lam, geometry, asym, guide, device="cpu", dtype=None, scale_invariant=False, seed=1):
    """Forward and backward of ``PF.dpp`` on ``tier``; returns (y, grads of x, α, λ[, F, b]) on the CPU."""
    dtype = dtype or x.dtype
    leaves = [x.to(device=device, dtype=dtype), alpha.to(device), lam.to(device)]
    if guide is not None:
        leaves += [t.to(device) for t in guide]
    leaves = [t.detach().requires_grad_() for t in leaves]
    k, s, p = geometry
    y = PF.dpp(leaves[0], leaves[1], leaves[2], k, s, p, asym=asym,
               guide=tuple(leaves[3:]) if guide is not None else None, scale_invariant=scale_invariant, tier=tier)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y.backward(grad_out.to(device=y.device, dtype=y.dtype))
    return [y.detach().cpu()] + [t.grad.cpu() for t in leaves]


def assert_matches_reference(got, want, dtype, what=""):
    """``run_dpp`` results judged by the one equivalence contract (output and input gradient element-wise,
    the per-channel parameter gradients norm-wise: they sum over every window)."""
    names = ["input", "alpha", "lam", "F", "b"]
    verdict = judge(PassOutputs(got[0], dict(zip(names, got[1:]))), PassOutputs(want[0], dict(zip(names, want[1:]))),
                    dtype)
    assert verdict.ok, f"{what}: {verdict.problem}"


# Geometries the kernels treat differently: non-overlapping exact tiling (fused backward), k3s2p1
# (overlap: gather backward), stride 1 (S3DPP), k == s with ragged edges, k < s (uncovered pixels).
GEOMETRIES = [
    ((2, 3, 6, 8), (2, 2, 0)),
    ((1, 2, 7, 5), (3, 2, 1)),
    ((2, 2, 5, 7), (2, 1, 0)),
    ((1, 2, 8, 6), (3, 1, 1)),
    ((1, 2, 7, 8), (3, 3, 0)),
    ((1, 2, 8, 7), (2, 3, 1)),
    ((1, 1, 19, 17), (2, 2, 0)),  # planes of > 64 outputs: several blocks and backward chunks per plane
]


# --------------------------------------------------------------------------- any process, no kernels run


def test_registered_for_every_dpp_variant():
    for variant in DPP_VARIANTS:
        assert "triton" in poolbench.tiers(variant.name)
        assert poolbench.get_spec(variant.name, "triton").family == "dpp"


@pytest.mark.skipif(INTERPRETED, reason="in the interpreter the tier is available on CPU")
def test_cpu_is_unavailable_with_a_reason():
    reason = poolbench.get_spec("dpp_full_asym", "triton").unavailable_reason("cpu")
    if HAS_TRITON:
        assert "TRITON_INTERPRET=1" in reason and "CUDA" in reason
    else:
        assert "triton is not installed" in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without CUDA")
def test_cuda_is_unavailable_without_a_gpu():
    reason = poolbench.get_spec("dpp_lite_sym", "triton").unavailable_reason("cuda")
    assert reason is not None and ("CUDA is not available" in reason or "triton" in reason)


@pytest.mark.skipif(INTERPRETED or not HAS_TRITON, reason="needs triton, outside the interpreter")
def test_cpu_tensors_without_interpreter_raise_a_clear_error():
    """Guards against Triton's own obscure failure when handed CPU tensors by a compiled kernel."""
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        PF.dpp(x, 1.0, 1.0, tier="triton")


@pytest.mark.skipif(INTERPRETED or not HAS_TRITON, reason="starts the interpreter run; needs triton")
def test_kernels_in_triton_interpreter():
    """Every kernel test below, rerun on CPU tensors under TRITON_INTERPRET=1 (no GPU needed)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", str(Path(__file__).relative_to(ROOT)), "-q", "-x",
               "-p", "no:cacheprovider", "--device", "cpu", "-m", "not slow and not gpu"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, f"interpreter run failed ({' '.join(command)}):\n{tail}"
    assert " passed" in done.stdout and "failed" not in done.stdout, tail


@pytest.mark.slow  # three processes import torch and triton: ~15 s of CPU
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_host_cost_script_times_both_whole_trees_at_module_level():
    """scripts/triton_host_cost.py: one A/B row per module path, each tree's worker timing its own module."""
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the script reads the baseline tree from git")
    command = [sys.executable, "scripts/triton_host_cost.py", "--base", "HEAD", "--levels", "module",
               "--variants", "dpp_full_sym", "--rounds", "1", "--calls", "3"]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("dpp_full_sym")]
    assert [row[1:3] for row in rows] == [["module", "forward"], ["module", "fwd+bwd"]]
    for row in rows:
        base, this, ratio = float(row[3]), float(row[4]), float(row[5].rstrip("x"))
        assert base > 0 and this > 0 and ratio > 0


# --------------------------------------------------------------------------- kernels (interpreter or GPU)


@pytest.mark.parametrize("asym,full", list(itertools.product((False, True), (False, True))),
                         ids=[v.name for v in VARIANTS])
@pytest.mark.parametrize("scale_invariant", (False, True), ids=("plain", "scale_invariant"))
def test_values_and_gradients_match_reference_float64(tier_device, asym, full, scale_invariant):
    ran = 0
    for shape, geometry in GEOMETRIES:
        if full and not guide_fits(shape, *geometry):
            continue
        x, alpha, lam, guide = dpp_inputs(shape, full)
        want = run_dpp("reference", x, alpha, lam, geometry, asym, guide, scale_invariant=scale_invariant)
        got = run_dpp("triton", x, alpha, lam, geometry, asym, guide, tier_device, scale_invariant=scale_invariant)
        assert_matches_reference(got, want, torch.float64, f"{shape} k,s,p={geometry}")
        ran += 1
    assert ran >= 2


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("asym,full", list(itertools.product((False, True), (False, True))),
                         ids=[v.name for v in VARIANTS])
def test_low_precision_matches_reference(tier_device, dtype, asym, full):
    """fp32/fp16/bf16 inputs accumulate in float32: compared with the reference at the rounded input."""
    for shape, geometry in (((2, 3, 6, 8), (2, 2, 0)), ((1, 2, 7, 5), (3, 2, 1))):
        x, alpha, lam, guide = dpp_inputs(shape, full, seed=3)
        x = x.to(dtype).double()
        want = run_dpp("reference", x, alpha, lam, geometry, asym, guide)
        got = run_dpp("triton", x, alpha.float(), lam.float(), geometry, asym,
                      guide and tuple(t.float() for t in guide), tier_device, dtype)
        assert got[0].dtype == dtype and got[1].dtype == dtype
        assert_matches_reference(got, want, dtype, f"{dtype} {shape} k,s,p={geometry}")


@pytest.mark.parametrize("name", [v.name for v in VARIANTS])
def test_spec_range_is_finite_in_float32(tier_device, name):
    """λ up to 200 and |I| up to 1e4 (and ReLU-flat windows) give finite outputs and gradients."""
    full, asym = "full" in name, "asym" in name
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 1e4
    x[:, :, :4] = x[:, :, :4].relu()  # whole windows of zeros
    x = x.float().double()  # the float32 input, so only the arithmetic differs
    alpha = torch.tensor([1e-3, 1.0, 0.0], dtype=torch.float64)
    lam = torch.tensor([200.0, 50.0, 200.0], dtype=torch.float64)
    guide = (dpid_filter(3, torch.float64), torch.zeros(3, dtype=torch.float64)) if full else None
    got = run_dpp("triton", x, alpha, lam, (2, 2, 0), asym, guide, tier_device, torch.float32)
    for tensor in got[:2] + got[3:]:  # output and every gradient but α's (α = 0 is the boundary)
        assert torch.isfinite(tensor).all()
    assert torch.isfinite(got[2][:2]).all()
    # The log-domain float64 vectorized tier handles this range exactly (the plain reference overflows).
    # The float64 log-domain vectorized tier is exact here (the plain reference overflows).  Errors
    # are relative to each tensor's scale: a window spanning 0..1e4 whose output is near 0 still
    # carries float32 rounding of its 1e4-sized terms.
    # The guide filter's gradient sums gg·I over windows with |I| ~ 1e4 that largely cancel, so its
    # float32 error is bounded by the plain-PyTorch float32 computation's, not by the table.
    want = run_dpp("vectorized", x, alpha, lam, (2, 2, 0), asym, guide)
    plain = run_dpp("vectorized", x, alpha, lam, (2, 2, 0), asym, guide, tier_device, torch.float32)
    for tensors in (got, want, plain):
        tensors[2] = tensors[2][:2]
    for index, (g, w, p) in enumerate(zip(got, want, plain)):
        scale = max(1.0, w.abs().max().item())
        if index == 4:
            assert (g.double() - w).abs().max() <= max(2 * (p.double() - w).abs().max(), tolerance(torch.float32, "grad")[1] * scale)
            continue
        assert_close(g.double() / scale, w / scale, dtype=torch.float32, kind="grad" if index else "output",
                     msg=f"tensor {index}")


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("name", [v.name for v in VARIANTS])
def test_large_magnitudes_are_finite_and_match_reference(tier_device, name, dtype):
    """|x| ~ 1e20 … 1e30: (x − Ĩ)² overflows float32 beyond 1.8e19; guards against forming it (NaN outputs)."""
    full, asym = "full" in name, "asym" in name
    for magnitude, geometry in ((1e20, (2, 2, 0)), (1e30, (2, 2, 0)), (1e30, (3, 2, 1))):
        x, alpha, lam, guide = dpp_inputs((1, 2, 6, 6), full, seed=23)
        x = (x * magnitude).to(dtype).double()  # the low-precision input, so only the arithmetic differs
        x[0, 0, :2, :2] = 0.5  # a flat small window inside a huge plane
        want = run_dpp("reference", x, alpha, lam, geometry, asym, guide)
        got = run_dpp("triton", x, alpha.float(), lam.float(), geometry, asym,
                      guide and tuple(t.float() for t in guide), tier_device, dtype)
        what = f"{name} {dtype} |x|~{magnitude:g} k,s,p={geometry}"
        for tensor in got:
            assert torch.isfinite(tensor).all(), what
        assert_matches_reference(got, want, dtype, what)


def test_alpha_zero_contributes_nothing(tier_device):
    """α = 0 exactly: w = ρ only, and no NaN from log 0 in the output or any gradient."""
    x, _, lam, guide = dpp_inputs((2, 3, 6, 8), True, seed=7)
    alpha = torch.zeros(3, dtype=torch.float64)
    for asym, g in ((False, None), (True, guide)):
        want = run_dpp("reference", x, alpha, lam, (2, 2, 0), asym, g)
        got = run_dpp("triton", x, alpha, lam, (2, 2, 0), asym, g, tier_device)
        assert not any(t.isnan().any() for t in got)
        assert_matches_reference(got, want, torch.float64, f"alpha=0 asym={asym}")


#: What a train step (forward, .sum().backward()) may dispatch besides the tier's two ops: the loss's
#: sum and its backward (ones_like, expand) and gradient accumulation into leaves (detach).
PLUMBING = {"aten::sum", "aten::ones_like", "aten::expand", "aten::detach"}
TRITON_OPS = {"poolbench_triton::dpp_forward", "poolbench_triton::dpp_backward"}


@pytest.mark.parametrize("name", [v.name for v in VARIANTS])
def test_inference_call_dispatches_exactly_the_tier_op(tier_device, name):
    """Guards against: exp(θα), exp(θλ) dispatched around the kernels on every module call (3 ops)."""
    module = poolbench.create(name, 8, 2, 2, 0, tier="triton", device=tier_device)
    x = torch.randn(1, 8, 4, 4, device=tier_device)
    assert host_cost.count_ops(module, x) == ["poolbench_triton::dpp_forward"]


@pytest.mark.parametrize("name", ["dpp_lite_sym", "dpp_full_asym"])
def test_train_step_dispatches_no_op_outside_the_tier_but_plumbing(tier_device, name):
    """Guards against: chain-rule muls (∂θ = α·∂α) and exps around the fused backward (16-18 ops)."""
    module = poolbench.create(name, 8, 2, 2, 0, tier="triton", device=tier_device)
    found = host_cost.count_ops(module, torch.randn(1, 8, 4, 4, device=tier_device, requires_grad=True), train=True)
    assert set(found) <= TRITON_OPS | PLUMBING, set(found) - TRITON_OPS - PLUMBING
    assert found.count("poolbench_triton::dpp_forward") == 1 and found.count("poolbench_triton::dpp_backward") == 1


@pytest.mark.parametrize("name,geometry", [("dpp_lite_asym", (3, 2, 1)), ("dpp_full_sym", (2, 2, 0)),
                                           ("dpp_lite_sym", (2, 2, 0))])
def test_module_gradients_are_wrt_the_stored_logs(tier_device, name, geometry):
    """The kernels get θα = ln α, θλ = ln λ as stored and return ∂L/∂θ: equal to the float64 reference's.

    Channels differ in α and λ (the in-kernel per-channel scaling), one with a large α (the α term at
    M = log2 α) and one with λ = e^−3 (nearly average pooling)."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    results = []
    for tier, device in (("triton", tier_device), ("reference", "cpu")):
        module = poolbench.create(name, 3, *geometry, tier=tier, alpha=0.6, lam=2.5).double().to(device)
        with torch.no_grad():
            module.log_alpha.copy_(torch.tensor([0.0, 3.0, -1.2], dtype=torch.float64))
            module.log_lam.copy_(torch.tensor([0.9, -3.0, 0.3], dtype=torch.float64))
        xs = x.to(device).requires_grad_()
        y = module(xs)
        grads = torch.autograd.grad((y.square() * y.new_tensor(0.5)).sum(), [xs, *module.parameters()])
        results.append([t.detach().cpu() for t in (y, *grads)])
    assert_matches_reference(results[0], results[1], torch.float64, f"{name} {geometry} module")
    for got, want in zip(results[0][2:4], results[1][2:4]):  # ∂L/∂θα, ∂L/∂θλ per channel
        assert_close(got, want, kind="grad", msg="gradient w.r.t. a stored log")


@pytest.mark.parametrize("asym,full", [(False, False), (True, True)], ids=("lite_sym", "full_asym"))
def test_lambda_zero_through_the_functional_form_has_reference_gradients(tier_device, asym, full):
    """λ = 0 exactly is reachable only with α, λ given (no log): values and every gradient, λ's included."""
    shape, geometry = ((1, 2, 7, 5), (3, 2, 1)) if not full else ((2, 3, 6, 8), (2, 2, 0))
    x, alpha, _, guide = dpp_inputs(shape, full, seed=11)
    lam = torch.zeros(shape[1], dtype=torch.float64)
    want = run_dpp("reference", x, alpha, lam, geometry, asym, guide)
    got = run_dpp("triton", x, alpha, lam, geometry, asym, guide, tier_device)
    assert got[3].abs().max() > 0  # ∂L/∂λ at λ = 0 is not zero in general: a real comparison
    assert_matches_reference(got, want, torch.float64, f"lambda=0 asym={asym} full={full}")


@pytest.mark.parametrize("name", [v.name for v in VARIANTS])
def test_lambda_zero_is_average_pooling(tier_device, name):
    x, alpha, _, guide = dpp_inputs((2, 3, 7, 5), "full" in name)
    y = PF.dpp(x.to(tier_device), alpha.to(tier_device), 0.0, 3, 2, 1, asym="asym" in name,
               guide=guide and tuple(t.to(tier_device) for t in guide), tier="triton")
    assert_close(y.cpu(), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))


def test_large_lambda_limits_are_max_and_extremum_pooling(tier_device):
    """λ → ∞, α → 0: Lite-Asym → max pooling, Lite-Sym → the value farthest from the window mean."""
    pattern = torch.tensor([[0.0, 1.0], [2.0, 4.0]], dtype=torch.float64)  # mean 1.75: farthest is 4 (the max)
    x = pattern.repeat(1, 2, 3, 3) + torch.arange(2, dtype=torch.float64).view(1, 2, 1, 1) * 10
    x[:, 1] = -x[:, 1]  # channel 1: farthest is the minimum
    y_asym = PF.dpp(x.to(tier_device), 1e-12, 200.0, asym=True, tier="triton").cpu()
    assert_close(y_asym, F.max_pool2d(x, 2, 2))
    y_sym = PF.dpp(x.to(tier_device), 1e-12, 200.0, asym=False, tier="triton").cpu()
    assert_close(y_sym[:, 0], F.max_pool2d(x, 2, 2)[:, 0])
    assert_close(y_sym[:, 1], -F.max_pool2d(-x, 2, 2)[:, 1])


@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
def test_nan_input_poisons_only_its_window(tier_device):
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 0, 0] = float("nan")
    y = PF.dpp(x.to(tier_device), 1.0, 2.0, tier="triton").cpu()
    assert y[0, 0, 0, 0].isnan() and not y.flatten()[1:].isnan().any()


def test_module_s3dpp_and_non_contiguous_input(tier_device):
    module = poolbench.create("s3dpp_lite_sym", 3, tier="triton", device=tier_device, seed=0).eval()
    reference = poolbench.create("s3dpp_lite_sym", 3, tier="reference", seed=0).eval().double()
    x = torch.randn(2, 6, 6, 3, dtype=torch.float64).permute(0, 3, 1, 2)  # channels-last view
    assert_close(module.double()(x.to(tier_device)).cpu(), reference(x))


def test_oversized_plane_raises_a_clear_error(tier_device):
    """One grid row per plane puts a plane's blocks on CUDA's 65535-long grid axis; beyond it, say so."""
    x = torch.zeros(1, 1, 2050, 2050, device=tier_device)
    with pytest.raises(ValueError, match="planes of at most"):
        PF.dpp(x, 1.0, 1.0, tier="triton")


def test_backward_parameter_gradients_are_deterministic_and_reset_the_counter(tier_device):
    """The window kernel's last program reduces the partial sums: same bits every call, counter back at 0.

    Guards against a reduction that depends on program order and against a counter left non-zero,
    which would make the next launch's last program never reduce (stale α/λ gradients).
    """
    from poolbench.impls import dpp_triton_kernels as kernels

    x, alpha, lam, guide = dpp_inputs((2, 3, 19, 17), True, dtype=torch.float64, seed=3)
    x, alpha, lam = x.float().to(tier_device), alpha.float().to(tier_device), lam.float().to(tier_device)
    weight, bias = (t.float().to(tier_device) for t in guide)
    grad = torch.randn(2, 3, 9, 8, generator=torch.Generator().manual_seed(4)).to(tier_device)
    options = (2, 2, 0, False, 1e-3, False)
    first = kernels.backward(grad, x, alpha, lam, weight, bias, *options)
    second = kernels.backward(grad, x, alpha, lam, weight, bias, *options)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    plan = kernels._PLANS[kernels.plan_key("backward", x, alpha, weight, *options)]
    ((counter, _),) = plan.scratch.values()  # one stream
    assert counter.item() == 0 and plan.split > 1  # several programs per plane did reduce
    assert first[1].shape == (3,) and first[3].shape == (3, 1, 3, 3) and first[4].shape == (3,)


# (shape, geometry, full, asym).  TARGET_PROGRAMS = 4 below: "chunk100" planes split into two chunks of 100
# windows, whose second block (64..99) is partial while block 0's lower neighbours reach past the chunk
# (window 63 + OW + 1 > 100): the case a look-ahead that stopped at the chunk's end got wrong.
ONE_KERNEL_CASES = {
    "2x2_full_two_chunks": ((1, 2, 20, 32), (2, 2, 0), True, False),
    "2x2_full_one_chunk": ((2, 2, 24, 14), (2, 2, 0), True, True),
    "2x2_full_chunk100": ((1, 2, 10, 80), (2, 2, 0), True, False),
    "k3_full_chunk100": ((1, 2, 10, 80), (3, 2, 1), True, True),
    "k3_lite_chunk100_odd": ((1, 2, 9, 79), (3, 2, 1), False, False),
    "k3_full_one_chunk_odd": ((2, 2, 13, 11), (3, 2, 1), True, False),
}


@pytest.mark.parametrize("case", ONE_KERNEL_CASES.values(), ids=ONE_KERNEL_CASES.keys())
def test_backward_in_one_kernel_across_blocks_and_chunks(tier_device, case, monkeypatch):
    """Full-DPP 2×2/2 and k3s2p1 (Lite and Full) backwards are one kernel writing ∂L/∂x once: a block's ∂L/∂x
    waits for its right/lower neighbours (ring of the last 2·BLOCK windows: ∂L/∂Ĩ, or all stats for
    overlapping windows), and a chunk's last blocks take their neighbours from a look-ahead block.  Few
    programs per plane make chunks of several blocks, so every hand-over is exercised; odd sizes give
    last windows owning one pixel row/column."""
    from poolbench.impls import dpp_triton_kernels as kernels

    shape, geometry, full, asym = case
    monkeypatch.setattr(kernels, "TARGET_PROGRAMS", 4)
    kernels._PLANS.clear()
    try:
        x, alpha, lam, guide = dpp_inputs(shape, full, seed=11)
        plan_args = (x, alpha, guide[0] if full else None, *geometry, asym, 1e-3, False)
        got = run_dpp("triton", x, alpha, lam, geometry, asym, guide, tier_device)
        plan = kernels._PLANS[kernels.plan_key("backward", *plan_args)]
        assert len(plan.launches) == 1 and plan.ring > 0  # one kernel
        n, c, h, w, oh, ow, p = plan.dims
        chunk = -(-p // plan.split)
        assert chunk > 64 or plan.split == 1  # several blocks per chunk (BLOCK = 64 in the interpreter)
        want = run_dpp("reference", x, alpha, lam, geometry, asym, guide)
        assert_matches_reference(got, want, torch.float64, f"{case}")
    finally:
        kernels._PLANS.clear()


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_one_kernel_backward_is_planned_for_k3s2p1_and_full_2x2_only():
    """The single-kernel backward where its ownership argument holds (2×2/2 Full, k3s2p1) and a block holds a
    window's lower-right neighbour; overlapping windows elsewhere (S3DPP's stride 1) and planes wider than
    the largest block keep the pixel gather, a second launch."""
    from poolbench.impls import dpp_triton_kernels as kernels

    def plan(shape, geometry, full):
        x = torch.empty(shape, device="meta")
        alpha = torch.empty(shape[1], device="meta")
        weight = torch.empty(shape[1], 1, 3, 3, device="meta") if full else None
        launches = kernels.backward_plan(torch.empty(1, device="meta"), x, alpha, alpha, weight, alpha, *geometry,
                                         False, 1e-3, False).launches
        return [launch.kernel.fn.__name__ for launch in launches]

    window, gather = "_dpp_bwd_window_kernel", "_dpp_bwd_input_kernel"
    largest = max(config.kwargs["BLOCK"] for config in kernels._dpp_bwd_window_kernel.configs)  # 64 interpreted
    assert plan((2, 4, 100, 100), (3, 2, 1), True) == [window]  # OW = 50
    assert plan((2, 4, 100, 100), (3, 2, 1), False) == [window]
    assert plan((2, 4, 120, 120), (2, 2, 0), True) == [window]  # OW = 60
    assert plan((2, 4, 120, 120), (2, 2, 0), False) == [window]
    assert plan((2, 4, 32, 32), (3, 1, 1), False) == [window, gather]
    wide = 2 * largest + 2  # OW = largest + 1: a block cannot hold a window's lower-right neighbour
    assert plan((1, 2, 8, wide), (3, 2, 1), True) == [window, gather]
    assert plan((1, 2, 8, 2 * wide), (2, 2, 0), True) == [window, gather]


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_backward_counter_and_partials_are_per_stream(monkeypatch):
    """Two same-shape backwards on two CUDA streams at once must not share the window kernel's finish counter
    (each would count the other's programs) or its partial sums: the plan hands out one pair per stream, the
    same pair again for the same stream.  The stream is what Triton launches on; here it is simulated on
    meta tensors."""
    from poolbench.impls import dpp_triton_kernels as kernels

    current = {"stream": 7}
    monkeypatch.setattr(kernels, "stream_key", lambda device: current["stream"])
    x, alpha = torch.empty(2, 3, 8, 8, device="meta"), torch.empty(3, device="meta")
    grad = torch.empty(2, 3, 4, 4, device="meta")
    options = (2, 2, 0, False, 1e-3, False)
    names = kernels._dpp_bwd_window_kernel.fn.arg_names
    slots = names.index("count_ptr"), names.index("part_ptr")

    def scratch():
        args = kernels.backward_plan(grad, x, alpha, alpha, None, None, *options).launches[0].args
        return tuple(args[slot] for slot in slots)

    first = scratch()
    again = scratch()
    assert again[0] is first[0] and again[1] is first[1]  # the same stream: its launches are ordered, one pair
    current["stream"] = 9
    second = scratch()
    assert second[0] is not first[0] and second[1] is not first[1]
    assert second[0].dtype == torch.int32 and second[0].shape == (1,)
    plan = kernels._PLANS[kernels.plan_key("backward", x, alpha, None, *options)]
    assert second[1].shape == (2 * 3 * plan.split * plan.npart,)
    current["stream"] = 7
    assert scratch()[1] is first[1]
    assert set(plan.scratch) == {7, 9}


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_backward_scratch_is_fresh_and_not_kept_while_a_graph_is_captured(monkeypatch):
    """Under CUDA graph capture the counter and partials come from the graph's pool, made per call and not
    cached with the plan (which a cache clear could free under a live graph); outside capture they are kept.
    Capture is simulated on meta tensors."""
    from poolbench.impls import dpp_triton_kernels as kernels

    x, alpha = torch.empty(2, 3, 8, 8, device="meta"), torch.empty(3, device="meta")
    grad = torch.empty(2, 3, 4, 4, device="meta")
    options = (2, 2, 0, False, 1e-3, False)
    slot = kernels._dpp_bwd_window_kernel.fn.arg_names.index("part_ptr")
    kernels._PLANS.clear()

    def partials():
        return kernels.backward_plan(grad, x, alpha, alpha, None, None, *options).launches[0].args[slot]

    monkeypatch.setattr(kernels, "capturing", lambda device: True)
    first = partials()
    assert partials() is not first
    plan = kernels._PLANS[kernels.plan_key("backward", x, alpha, None, *options)]
    assert plan.scratch == {}
    monkeypatch.setattr(kernels, "capturing", lambda device: False)
    kept = partials()
    assert partials() is kept and len(plan.scratch) == 1
    assert kernels.capturing(torch.device("cpu")) is False and kernels.capturing(torch.device("meta")) is False


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_stream_key_off_the_gpu_is_one_stream():
    from poolbench.impls import dpp_triton_kernels as kernels

    assert kernels.stream_key(torch.device("cpu")) is None
    assert kernels.stream_key(torch.device("meta")) is None


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_autotune_setting_comes_from_the_environment_and_set_autotune(monkeypatch):
    """POOLBENCH_TRITON_AUTOTUNE is read at import (not per call); 0/false/no/off turn autotuning off, anything
    else (or nothing) leaves it on; set_autotune changes it later and takes only a bool."""
    from poolbench.impls import dpp_triton_kernels as kernels

    for value, expected in (("0", False), ("off", False), ("false", False), ("1", True), ("yes", True)):
        monkeypatch.setenv(kernels.AUTOTUNE_ENV, value)
        assert kernels.autotune_from_environment() is expected
    monkeypatch.delenv(kernels.AUTOTUNE_ENV)
    assert kernels.autotune_from_environment() is True
    monkeypatch.setattr(kernels, "AUTOTUNE", True)
    kernels.set_autotune(False)
    assert kernels.autotune_enabled() is False
    with pytest.raises(TypeError, match="takes a bool"):
        kernels.set_autotune("0")
    assert kernels.autotune_enabled() is False


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_launch_plans_are_keyed_by_everything_that_changes_them(monkeypatch):
    """A cached plan is never reused across shapes, strides, dtypes, devices or settings, and a new shape is
    validated again (guards against a cache that skips the plane-size check)."""
    from poolbench.impls import dpp_triton_kernels as kernels

    x = torch.empty(2, 3, 8, 8, device="meta")
    alpha = torch.empty(3, device="meta")
    options = (2, 2, 0, False, 1e-3, False)
    key = kernels.plan_key("forward", x, alpha, None, *options)
    assert key != kernels.plan_key("forward", x.double(), alpha, None, *options)
    assert key != kernels.plan_key("forward", torch.empty(4, 3, 8, 8, device="meta"), alpha, None, *options)
    assert key != kernels.plan_key("forward", x.transpose(2, 3), alpha, None, *options)
    assert key != kernels.plan_key("forward", torch.empty(2, 3, 8, 8), alpha, None, *options)
    assert key != kernels.plan_key("forward", x, alpha, alpha, *options)
    assert key != kernels.plan_key("forward", x, alpha, None, 2, 2, 0, True, 1e-3, False)
    assert key != kernels.plan_key("forward", x, alpha, None, *options, True)  # the stored logs: other kernels
    assert key == kernels.plan_key("forward", x, alpha, None, *options, False)
    monkeypatch.setattr(kernels, "AUTOTUNE", not kernels.AUTOTUNE)
    assert key != kernels.plan_key("forward", x, alpha, None, *options)
    kernels.forward_plan(x, alpha, alpha, None, None, *options)  # cached
    with pytest.raises(ValueError, match="planes of at most"):
        kernels.forward_plan(torch.empty(1, 1, 2050, 2050, device="meta"), alpha[:1], alpha[:1], None, None,
                             *options)


@pytest.mark.skipif(INTERPRETED or not HAS_TRITON, reason="autotuning exists only outside the interpreter")
def test_autotune_switch_gives_one_fixed_config(monkeypatch):
    """POOLBENCH_TRITON_AUTOTUNE=0: one config per kernel and shape (a fixed grid), the default autotunes."""
    from poolbench.impls import dpp_triton_kernels as kernels

    x, alpha = torch.empty(32, 64, 56, 56, device="meta"), torch.empty(64, device="meta")
    y = torch.empty(32, 64, 28, 28, device="meta")
    options = (2, 2, 0, False, 1e-3, False)
    monkeypatch.setattr(kernels, "AUTOTUNE", True)
    kernels.set_autotune(False)
    fixed = kernels.forward_plan(x, alpha, alpha, None, None, *options)[1] + \
        kernels.backward_plan(y, x, alpha, alpha, None, None, *options).launches
    assert fixed and all(launch.config is not None and isinstance(launch.grid, tuple) for launch in fixed)
    assert fixed[0].grid == (32 * 64, -(-28 * 28 // fixed[0].config.kwargs["BLOCK"]))
    kernels.set_autotune(True)
    tuned = kernels.forward_plan(x, alpha, alpha, None, None, *options)[1]
    assert tuned[0].config is None and callable(tuned[0].grid)
    # the autotune key holds the variant flags and the plane, not the batch size
    for key in (kernels.FORWARD_KEY, kernels.BACKWARD_KEY, kernels.PIXEL_KEY):
        assert {"ASYM", "K", "S", "PAD", "FULL"} <= set(key) and "N" not in key and "NC" not in key


class TestTritonCustomOp(DPPCustomOpTester):
    """The op-family contract shared with cpp/cuda (opcheck, fake kernels, gradcheck, double backward, ...)."""

    tier, namespace = "triton", dpp_triton.NAMESPACE
    log_params = True
    # Full finite differences through the interpreter take minutes: fast mode, and only the overlapping,
    # padded window (k3 s2 p1); every geometry's gradients are compared with the reference above.
    fast_gradcheck = INTERPRETED
    gradcheck_geometries = GRADCHECK_GEOMETRIES[1:2] if INTERPRETED else GRADCHECK_GEOMETRIES


if DPPTierTester is not None:

    class TestTritonTierContract(DPPTierTester):
        """The shared DPP tier contract (smoke, reference, gradcheck, module == functional, half precision)."""

        tier = "triton"

        if INTERPRETED:
            # Full finite differences of every input element cost ~2 min in the interpreter; the
            # default run keeps the fast-mode gradcheck above, this one runs with -m slow.
            @pytest.mark.slow
            @pytest.mark.parametrize("name", [v.name for v in VARIANTS])
            def test_gradcheck_float64(self, name, device):
                super().test_gradcheck_float64(name, device)


# --------------------------------------------------------------------------- GPU only


def _gpu_dpp_pair(name, shape, dtype, device, geometry=(2, 2, 0)):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=generator) * 2).to(device=device, dtype=dtype)
    modules = [poolbench.create(name, shape[1], *geometry, tier=tier, device=device, alpha=0.5, lam=2.0)
               for tier in ("triton", "vectorized")]
    with torch.no_grad():
        for parameter in modules[0].parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator).to(device))
    modules[1].load_state_dict(modules[0].state_dict())
    return x, modules


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("name", [v.name for v in VARIANTS])
def test_gpu_vgg_layer_matches_vectorized(tier_device, name, dtype):
    """A VGG-16 pooling layer at batch 4 (autotuned kernels, many blocks per plane) vs the vectorized tier."""
    x, (fast, slow) = _gpu_dpp_pair(name, (4, 64, 224, 224), dtype, tier_device)
    outputs = []
    for module in (fast, slow):
        xs = x.detach().requires_grad_()
        y = module(xs)
        y.backward(torch.ones_like(y))
        outputs.append([y.float(), xs.grad.float()] + [p.grad.float() for p in module.parameters()])
    for got, want in zip(*outputs):
        scale = max(1.0, want.abs().max().item())
        assert_close(got / scale, want / scale, dtype=dtype, kind="grad")


@pytest.mark.gpu
@pytest.mark.parametrize("name", [v.name for v in VARIANTS])
def test_gpu_torch_compile_composes(tier_device, name):
    _check_compiled_equals_eager(name, tier_device, (2, 16, 32, 32))


def _check_compiled_equals_eager(name, device, shape=(2, 3, 8, 8)):
    geometry = (3, 2, 1)
    x, (module, _) = _gpu_dpp_pair(name, shape, torch.float32, device, geometry)

    def step(x):
        return (module(torch.relu(x)) * 2).sum()

    compiled = torch.compile(step, fullgraph=True)
    grads = []
    for fn in (step, compiled):
        xs = x.detach().requires_grad_()
        module.zero_grad()
        fn(xs).backward()
        grads.append([xs.grad.clone()] + [p.grad.clone() for p in module.parameters()])
    for got, want in zip(*grads):
        assert_close(got, want, kind="grad")


@pytest.mark.gpu
def test_gpu_float64_matches_reference(tier_device):
    x, alpha, lam, guide = dpp_inputs((2, 3, 7, 5), True, seed=19)
    want = run_dpp("reference", x, alpha, lam, (3, 2, 1), True, guide)
    got = run_dpp("triton", x, alpha, lam, (3, 2, 1), True, guide, tier_device)
    assert_matches_reference(got, want, torch.float64)


@pytest.mark.gpu
def test_gpu_same_shape_backwards_on_two_streams_at_once(tier_device):
    """Two streams, same shape, launched back to back without waiting: each gets the serial result."""
    from poolbench.impls import dpp_triton_kernels as kernels

    x, alpha, lam, guide = dpp_inputs((8, 16, 56, 56), True, seed=23)
    args = [t.float().to(tier_device) for t in (x, alpha, lam, *guide)]
    grads = [torch.randn(8, 16, 28, 28, generator=torch.Generator().manual_seed(s)).to(tier_device) for s in (1, 2)]
    options = (3, 2, 1, False, 1e-3, False)
    serial = [kernels.backward(g, *args, *options) for g in grads]
    streams = [torch.cuda.Stream(tier_device) for _ in grads]
    torch.cuda.synchronize(tier_device)
    results = []
    for _ in range(5):
        for stream, g in zip(streams, grads):
            with torch.cuda.stream(stream):
                results.append((g, kernels.backward(g, *args, *options)))
    torch.cuda.synchronize(tier_device)
    for g, got in results:
        want = serial[0] if g is grads[0] else serial[1]
        for a, b in zip(got, want):
            assert torch.equal(a, b)
