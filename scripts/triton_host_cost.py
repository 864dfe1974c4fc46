"""Host (Python) cost of one triton-tier DPP call with the Triton kernels stubbed: A/B of two trees in one run.

The kernels are replaced by no-op stand-ins, so what is timed is everything a call does on the host
*besides* Triton's own launch: the custom op, the launch plan, argument casts, allocations and the
ops around the kernels.  The baseline kernel module is read from a git revision (default 7e55a68),
the candidate is the working tree's; both run behind the same custom op, alternating, in one process
(CPU tensors, Triton's interpreter mode so the tier accepts them, one thread).  Three levels:
the tier's kernel module (forward, backward), the tier's ops called directly (the baseline's
``custom_op`` wrappers are rebuilt here under a scratch namespace), and the whole ``nn.Module`` call
(front end, dispatch, autograd: shared with the other tiers; the op registration there is this tree's
on both sides).  In the module rows the baseline side also takes the baseline's call path: the module
hands the op α = exp(θα), λ = exp(θλ) (two ``exp`` per call, two chain-rule ``mul`` per train step)
where this tree's hands it the stored logs (``log_params``: one op per call); the baseline kernel module
is reached through a shim that drops the (then False) ``log_params`` argument.  The baseline's
interpreter-only ε² tensor is replaced by the float the GPU path passes, so neither side pays for it.

    python scripts/triton_host_cost.py [--base 7e55a68] [--shape 1,64,4,4] [--calls 2000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the tier then accepts CPU tensors
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from typing import Optional  # noqa: E402

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

import impls  # noqa: E402
import poolbench  # noqa: E402
import poolbench.impls  # noqa: E402

KERNELS = ("_dpp_fwd_kernel", "_dpp_bwd_window_kernel", "_dpp_bwd_input_kernel")


class _NoLaunch:
    """Stands in for a Triton kernel (autotuned or plain): indexing by a grid gives a no-op launcher."""

    def __init__(self, kernel):
        self.configs = getattr(kernel, "configs", None)
        self.early_config_prune = getattr(kernel, "early_config_prune", None)
        self.arg_names = getattr(getattr(kernel, "fn", kernel), "arg_names", ())
        self.fn = self

    def __getitem__(self, grid):
        return _noop


def _noop(*args, **kwargs):
    return None


def _stubbed(module):
    for name in KERNELS:
        setattr(module, name, _NoLaunch(getattr(module, name)))
    return module


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _use(module):
    """Route the tier's custom op to ``module``'s forward/backward."""
    sys.modules["poolbench.impls.dpp_triton_kernels"] = module
    impls.dpp_triton_kernels = module
    # ``poolbench.impls`` is its own module object (the checkout's impls/ imported under that name), and
    # the tier imports its kernels from there: without this the op would run the real (interpreted) kernels.
    poolbench.impls.dpp_triton_kernels = module


def _without_log_params(function):
    """A baseline launcher (no ``log_params`` argument) behind this tree's op, which passes one."""
    def call(*args):
        *args, log_params = args
        if log_params:
            raise RuntimeError("the baseline kernels take α and λ, not their logs")
        return function(*args)

    return call


def _module_takes_logs(module, takes_logs: bool) -> None:
    """Switch ``module`` between this tree's call (stored logs to the op) and the baseline's (exp first)."""
    if module.kernel_takes_logs != takes_logs:
        module.kernel_takes_logs = takes_logs
        module.__dict__.pop("_validated", None)  # the cached fast path is bound to one call path


def _baseline_ops(base_forward, base_backward):
    """The op wrappers of the baseline tree (torch.library.custom_op) around the baseline's launchers."""
    @torch.library.custom_op("poolbench_triton_hostcost::dpp_forward", mutates_args=())
    def forward(x: Tensor, alpha: Tensor, lam: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                kernel_size: int, stride: int, padding: int, asym: bool, eps2: float,
                scale_invariant: bool) -> Tensor:
        return base_forward(x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant)

    @torch.library.custom_op("poolbench_triton_hostcost::dpp_backward", mutates_args=())
    def backward(grad: Tensor, x: Tensor, alpha: Tensor, lam: Tensor, weight: Optional[Tensor],
                 bias: Optional[Tensor], kernel_size: int, stride: int, padding: int, asym: bool, eps2: float,
                 scale_invariant: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        grads = base_backward(grad, x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2,
                              scale_invariant)
        if weight is None:
            grads = (*grads[:3], alpha.new_empty((0,)), alpha.new_empty((0,)))
        return grads

    return forward, backward


def _time_per_call(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="7e55a68", help="git revision of the baseline kernel module")
    parser.add_argument("--shape", default="1,64,4,4")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default="dpp_lite_sym,dpp_full_sym")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shape = tuple(int(v) for v in args.shape.split(","))

    source = subprocess.run(["git", "show", f"{args.base}:impls/dpp_triton_kernels.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        base_path = Path(folder) / "dpp_triton_kernels_base.py"
        base_path.write_text(source)
        base = _stubbed(_load(base_path, "dpp_triton_kernels_base"))
    base._eps2_argument = lambda eps2, *device: float(eps2)  # as on the GPU (the interpreter's tensor is not host cost there)
    # The baseline's own launchers (tier and op rows); behind this tree's op (module rows) through a shim.
    base_plain = SimpleNamespace(forward=base.forward, backward=base.backward)
    if "log_params" not in base.forward.__code__.co_varnames:
        base.forward, base.backward = _without_log_params(base.forward), _without_log_params(base.backward)
    base_ops = _baseline_ops(base_plain.forward, base_plain.backward)
    new = _stubbed(_load(ROOT / "impls" / "dpp_triton_kernels.py", "dpp_triton_kernels_candidate"))
    sides = {f"base {args.base}": base, "this tree": new}

    print(f"shape {shape}, {args.calls} calls x {args.rounds} rounds, kernels stubbed, 1 thread; "
          f"median µs per call (A/B alternating)")
    print("tier: the kernel module's forward/backward; op: the tier's forward and backward ops called directly "
          "(base: custom_op wrappers as in the base tree); module: the nn.Module call through the shared front end, "
          "op layer and autograd (base: α, λ exponentiated before the op, as the base tree's module did; this tree: "
          "the stored logs to the op)")
    print(f"{'variant':<14} {'path':<18} " + " ".join(f"{name:>16}" for name in sides) + "   ratio")
    for name in args.variants.split(","):
        module = poolbench.create(name, shape[1], 2, 2, 0, tier="triton")
        x = torch.randn(shape)
        xg = x.clone().requires_grad_()
        gy = torch.randn(module(x).shape)

        def inference():
            with torch.no_grad():
                module(x)

        def train_step():
            module(xg).backward(gy)

        alpha, lam = torch.rand(shape[1]) + 0.5, torch.rand(shape[1])
        full = name.startswith("dpp_full")
        weight, bias = (torch.randn(shape[1], 1, 3, 3), torch.randn(shape[1])) if full else (None, None)
        options = (2, 2, 0, False, 1e-3, False)

        def tier_forward(kernels):
            return lambda: kernels.forward(x, alpha, lam, weight, bias, *options)

        def tier_train(kernels):
            def run():
                kernels.forward(x, alpha, lam, weight, bias, *options)
                kernels.backward(gy, x, alpha, lam, weight, bias, *options)
            return run

        ops = {"base": base_ops, "this": (torch.ops.poolbench_triton.dpp_forward,
                                          torch.ops.poolbench_triton.dpp_backward)}

        def op_forward(which):
            return lambda: ops[which][0](x, alpha, lam, weight, bias, *options)

        def op_train(which):
            def run():
                ops[which][0](x, alpha, lam, weight, bias, *options)
                ops[which][1](gy, x, alpha, lam, weight, bias, *options)
            return run

        paths = (("tier forward", tier_forward(base_plain), tier_forward(new)),
                 ("tier fwd+bwd", tier_train(base_plain), tier_train(new)),
                 ("op forward", op_forward("base"), op_forward("this")),
                 ("op fwd+bwd", op_train("base"), op_train("this")),
                 ("module forward", inference, inference), ("module fwd+bwd", train_step, train_step))
        for path, base_fn, this_fn in paths:
            samples = {side: [] for side in sides}
            for _ in range(args.rounds):
                for (side, kernels), fn, takes_logs in zip(sides.items(), (base_fn, this_fn), (False, True)):
                    _use(kernels)
                    _module_takes_logs(module, takes_logs)
                    fn()  # builds (and caches) the plan outside the timed calls
                    samples[side].append(_time_per_call(fn, args.calls))
            medians = {side: statistics.median(values) for side, values in samples.items()}
            first, second = medians.values()
            print(f"{name:<14} {path:<18} " + " ".join(f"{m:16.1f}" for m in medians.values())
                  + f"   {first / second:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
