"""The tester every fused DPP tier (a ``torch.library`` op family) inherits: cpp, cuda, triton.

A tier's test file sets ``tier`` and ``namespace``; it then gets, on the
``--device`` fixture's device: ``torch.library.opcheck`` of both ops, fake
kernels against real shapes, gradcheck and gradgradcheck in float64 (double
backward of every variant, S3DPP included), first derivatives equal with and
without ``create_graph``, eager == ``torch.compile(fullgraph=True)``, only the
inputs saved for backward, deterministic backward, and FlopCounterMode.
Values against the float64 reference are :class:`dpp_tester.DPPTierTester`'s job.
"""
from __future__ import annotations

import pytest
import torch

import poolbench
from poolbench import dpp_custom_op
from poolbench import functional as PF
from poolbench.dpp import DPP_VARIANTS, DPPArgs
from poolbench.tolerances import assert_close
from poolbench.verify.equivalence import perturb_parameters

from dpp_tester import guide_fits, random_dpp_parameters

#: (shape, kernel_size, stride, padding): exact tiling, the ResNet stem window (overlap, padding), k > s + 1.
GRADCHECK_GEOMETRIES = (((1, 2, 4, 6), 2, 2, 0), ((1, 2, 5, 5), 3, 2, 1), ((1, 1, 5, 5), 4, 3, 2))


def op_inputs(full: bool, device, dtype=torch.float64, shape=(2, 3, 6, 8), requires_grad=False, seed=0):
    """(x, α, λ, weight, bias) for the ops; weight and bias are None for Lite-DPP."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    alpha, lam, guide = random_dpp_parameters(shape[1], full, dtype=torch.float64, seed=seed)
    weight, bias = guide if full else (None, None)
    tensors = [t if t is None else t.to(device=device, dtype=dtype) for t in (x, alpha, lam, weight, bias)]
    return tuple(t if t is None else t.requires_grad_(requires_grad) for t in tensors)


class DPPCustomOpTester:
    """Subclass and set ``tier`` and ``namespace``; every test below then runs against that op family."""

    tier: str = ""
    namespace: str = ""
    #: Full finite differences cost minutes in Triton's interpreter; such tiers use gradcheck's fast mode.
    fast_gradcheck: bool = False
    gradcheck_geometries = GRADCHECK_GEOMETRIES
    #: Shape of the determinism check (a GPU tier overrides it with a VGG-16-sized layer).
    determinism_shape = (2, 3, 7, 5)
    #: The family's ops take the trailing ``log_params`` flag (α, λ given as their logs).
    log_params: bool = False

    @pytest.fixture(autouse=True)
    def _op_ready(self, device):
        reason = poolbench.get_spec("dpp_lite_sym", self.tier).unavailable_reason(device)
        if reason is not None:
            pytest.skip(reason)
        PF.dpp(torch.zeros(1, 1, 2, 2, device=device), 1.0, 1.0, tier=self.tier)  # builds/loads the library

    @property
    def ops(self):
        return getattr(torch.ops, self.namespace)

    @pytest.mark.parametrize("full", [False, True], ids=["lite", "full"])
    def test_opcheck(self, full, device):
        """Schema, fake (meta) kernels, autograd registration and AOT dispatch of both ops."""
        settings = DPPArgs(3, 2, 1, asym=True).op_arguments()
        inputs = op_inputs(full, device, requires_grad=True)
        torch.library.opcheck(self.ops.dpp_forward.default, (*inputs, *settings))
        grad = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device)
        detached = tuple(t if t is None else t.detach() for t in inputs)
        torch.library.opcheck(self.ops.dpp_backward.default, (grad, *detached, *settings))
        if self.log_params:  # the module's call: α, λ as their logs
            x, alpha, lam, weight, bias = detached
            logs = (x.requires_grad_(), alpha.log().requires_grad_(), lam.log().requires_grad_(),
                    *(t if t is None else t.requires_grad_() for t in (weight, bias)))
            torch.library.opcheck(self.ops.dpp_forward.default, (*logs, *settings, True))
            torch.library.opcheck(self.ops.dpp_backward.default,
                                  (grad, *(t if t is None else t.detach() for t in logs), *settings, True))

    @pytest.mark.parametrize("full", [False, True], ids=["lite", "full"])
    def test_log_params_gradcheck_float64(self, full, device):
        """With log_params the op exponentiates α, λ itself and returns gradients w.r.t. the logs."""
        if not self.log_params:
            pytest.skip("this op family takes α and λ only")
        settings = DPPArgs(3, 2, 1, asym=True).op_arguments()
        x, alpha, lam, weight, bias = op_inputs(full, device)
        inputs = [x, alpha.log(), lam.log(), *((weight, bias) if full else ())]
        inputs = [t.detach().requires_grad_() for t in inputs]

        def function(x, log_alpha, log_lam, *guide):
            return self.ops.dpp_forward(x, log_alpha, log_lam, *(guide or (None, None)), *settings, True)

        def reference(x, log_alpha, log_lam, *guide):
            return PF.dpp(x, log_alpha.exp(), log_lam.exp(), 3, 2, 1, asym=True, guide=guide or None,
                          tier="vectorized")

        assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-7, rtol=1e-5,
                                        fast_mode=self.fast_gradcheck)
        g = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device)
        got = torch.autograd.grad(function(*inputs), inputs, g)
        want = torch.autograd.grad(reference(*inputs), inputs, g)
        for a, b in zip(got, want):
            assert_close(a, b, kind="grad")

    @pytest.mark.parametrize("full", [False, True], ids=["lite", "full"])
    def test_fake_kernels_give_real_shapes_and_dtypes(self, full, device):
        """What torch.compile traces (the meta kernels) must describe what the real kernels return."""
        settings = DPPArgs(3, 2, 1).op_arguments()
        real = op_inputs(full, device, dtype=torch.float32)
        meta = tuple(t if t is None else t.to("meta") for t in real)

        def described(inputs):
            y = self.ops.dpp_forward(*inputs, *settings)
            return [(tuple(t.shape), t.dtype) for t in (y, *self.ops.dpp_backward(y, *inputs, *settings))]

        assert described(meta) == described(real)
        assert described(meta)[0] == ((2, 3, 3, 4), torch.float32)

    @pytest.mark.parametrize("scale_invariant", [False, True], ids=["plain", "scale_invariant"])
    @pytest.mark.parametrize("name", [v.name for v in DPP_VARIANTS if not v.stochastic])
    def test_gradcheck_float64(self, name, scale_invariant, device):
        """The fused backward op against finite differences, w.r.t. x, α, λ and (Full) F, b."""
        for shape, k, s, p in self.gradcheck_geometries:
            full = "full" in name
            if full and not guide_fits(shape, k, s, p):
                continue
            inputs = [t for t in op_inputs(full, device, shape=shape, requires_grad=True) if t is not None]

            def function(x, alpha, lam, *guide):
                return PF.dpp(x, alpha, lam, k, s, p, asym="asym" in name, guide=guide or None,
                              scale_invariant=scale_invariant, tier=self.tier)

            assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-7, rtol=1e-5,
                                            fast_mode=self.fast_gradcheck)

    @pytest.mark.parametrize("name", [v.name for v in DPP_VARIANTS])
    def test_gradgradcheck_float64(self, name, device):
        """Double backward of every variant (a silent zero here once broke gradient penalties)."""
        module, parameters = self._double_module(name, device)
        x = torch.randn(1, 2, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
        names = [n for n, _ in module.named_parameters()]

        def function(x, *values):
            return torch.func.functional_call(module, dict(zip(names, values)), (x,))

        # Fast mode (random projections of the second derivative): the full Jacobian of the backward
        # w.r.t. every input and output element takes half a minute per variant on a shared CPU.
        assert torch.autograd.gradgradcheck(function, (x, *parameters), eps=1e-6, atol=1e-6, rtol=1e-4,
                                            fast_mode=True)

    def test_double_backward_matches_vectorized(self, device):
        """The issue's reproduction: d/dx of Σ ∂(Σ y²)/∂x equals the vectorized tier's (was 0.0 vs 16.0)."""
        x = torch.rand(1, 2, 4, 4, dtype=torch.float64, device=device)
        results = []
        for tier in (self.tier, "vectorized"):
            module = poolbench.create("dpp_full_asym", 2, 2, 2, 0, tier=tier, device=device, lam=1.5).double()
            xs = x.clone().requires_grad_()
            (g,) = torch.autograd.grad(module(xs).square().sum(), xs, create_graph=True)
            results.append(torch.autograd.grad(g.sum(), [xs, *module.parameters()]))
        for got, want in zip(*results):
            assert_close(got, want, kind="grad")
        assert results[0][0].abs().sum() > 0

    @pytest.mark.parametrize("name", ["dpp_lite_asym", "dpp_full_sym"])
    def test_first_derivatives_same_with_create_graph(self, name, device, monkeypatch):
        """create_graph=True switches to the differentiable formula; its first derivatives equal the fused op's.

        Plain training (eager or compiled) must keep the fused backward op: the formula is counted.
        """
        formula_calls = []
        fallback = dpp_custom_op._differentiable_vjp
        monkeypatch.setattr(dpp_custom_op, "_differentiable_vjp",
                            lambda *args: formula_calls.append(1) or fallback(*args))
        module, parameters = self._double_module(name, device)
        x = torch.randn(2, 2, 6, 6, dtype=torch.float64, device=device, requires_grad=True)
        fused = torch.autograd.grad(module(x).square().sum(), [x, *parameters])
        torch.compile(module, fullgraph=True)(x).sum().backward()
        assert not formula_calls
        graphed = torch.autograd.grad(module(x).square().sum(), [x, *parameters], create_graph=True)
        assert len(formula_calls) == 1 and all(g.requires_grad for g in graphed)
        for got, want in zip(graphed, fused):
            assert_close(got.detach(), want, kind="grad")

    def test_torch_compile_matches_eager(self, device):
        """The op inside torch.compile(fullgraph=True): no graph break, same output and gradients."""
        torch._dynamo.reset()
        module = poolbench.create("dpp_full_asym", 3, 3, 2, 1, tier=self.tier, device=device, lam=2.0)
        x = torch.randn(2, 3, 8, 8, device=device)

        def step(fn):
            xs = x.clone().requires_grad_()
            y = fn(torch.relu(xs))
            return y, torch.autograd.grad(y.square().sum(), [xs, *module.parameters()])

        eager, compiled = step(module), step(torch.compile(module, fullgraph=True))
        assert_close(compiled[0], eager[0])
        for got, want in zip(compiled[1], eager[1]):
            assert_close(got, want, kind="grad")

    @pytest.mark.parametrize("name", ["dpp_lite_asym", "dpp_full_sym"])
    def test_bound_call_records_a_graph_exactly_when_one_is_needed(self, name, device):
        """The module's validated call (the bound fast path) decides itself whether autograd records.

        Against the op's registered autograd kernel (the functional form): no graph under ``no_grad`` or
        when nothing requires grad, and the same output and gradients when only x, or only the
        parameters, require grad."""
        module, parameters = self._double_module(name, device)
        x = torch.randn(2, 2, 6, 6, dtype=torch.float64, device=device)
        module(x)  # validates the key: later calls take the bound path
        assert len(module._validated) == 1

        def functional(x):
            guide = (module.guide_weight, module.guide_bias) if module.full else None
            return PF.dpp(x, module.log_alpha.exp(), module.log_lam.exp(), 2, 2, 0, asym=module.asym,
                          guide=guide, tier=self.tier)

        with torch.no_grad():
            assert module(x).grad_fn is None and not module(x).requires_grad
            want = functional(x)
        assert_close(module(x).detach(), want)
        for p in parameters:
            p.requires_grad_(False)
        assert not module(x).requires_grad  # grad mode on, nothing to differentiate: no graph
        xs = x.clone().requires_grad_()
        (got,) = torch.autograd.grad(module(xs).square().sum(), xs)
        (expected,) = torch.autograd.grad(functional(xs).square().sum(), xs)
        assert_close(got, expected, kind="grad")
        for p in parameters:
            p.requires_grad_(True)
        got = torch.autograd.grad(module(x).square().sum(), parameters)
        expected = torch.autograd.grad(functional(x).square().sum(), parameters)
        for a, b in zip(got, expected):
            assert_close(a, b, kind="grad")
        assert len(module._validated) == 1  # every call above took the bound path

    def test_saves_only_the_inputs(self, device):
        """Training memory: autograd keeps x and the per-channel parameters, no unfolded windows or weights."""
        x, alpha, lam, weight, bias = op_inputs(True, device, dtype=torch.float32, shape=(2, 3, 16, 16),
                                                requires_grad=True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            PF.dpp(x, alpha, lam, 3, 2, 1, guide=(weight, bias), tier=self.tier)
        assert 0 < sum(t.numel() for t in saved) <= x.numel() + 12 * x.shape[1]  # x, α, λ, F, b

    def test_backward_is_deterministic(self, device):
        """Per-channel gradients are reduced without atomics: two backward passes agree bitwise."""
        inputs = op_inputs(True, device, dtype=torch.float32, shape=self.determinism_shape)
        settings = DPPArgs(3, 2, 1).op_arguments()
        grad = torch.randn(DPPArgs(3, 2, 1).pooled_shape(self.determinism_shape), device=device)
        first = self.ops.dpp_backward(grad, *inputs, *settings)
        second = self.ops.dpp_backward(grad, *inputs, *settings)
        for a, b in zip(first, second):
            assert torch.equal(a, b)

    def test_flop_counter_mode(self, device):
        """Forward and backward run under FlopCounterMode, and poolbench prices the opaque op by its formula.

        FlopCounterMode cannot see into the fused op; poolbench's counter (how a network's MACs are
        counted) must then give the layer exactly the pooler's analytic MACs, not 0.
        """
        from torch.utils.flop_counter import FlopCounterMode

        from poolbench import flops

        module = poolbench.create("dpp_lite_sym", 3, 2, 2, 0, tier=self.tier, device=device)
        x = torch.randn(1, 3, 8, 8, device=device, requires_grad=True)
        with FlopCounterMode(display=False):
            module(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        counts = flops.count_layer(module, x.detach())
        assert counts["analytic"] > 0
        assert counts["flop_counter"] == counts["analytic"]

    def _double_module(self, name, device):
        """A float64 module of ``name`` with non-default parameters; S3DPP in eval (deterministic sampling)."""
        options = {"seed": 0} if "s3dpp" in name else {}
        module = poolbench.create(name, 2, 2, 2, 0, tier=self.tier, device=device, alpha=0.7, lam=1.5, **options)
        module = module.double().eval()
        perturb_parameters(module, seed=1)  # the equivalence contract's one perturbation rule
        return module, [p for p in module.parameters()]
