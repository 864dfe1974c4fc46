"""Host (Python) cost of one triton-tier DPP call with the Triton kernels stubbed: A/B of two trees in one run.

The kernels are replaced by no-op stand-ins, so what is timed is everything a call does on the host
*besides* Triton's own launch: the module, the custom op, autograd, the launch plan, argument casts,
allocations and the ops around the kernels.  The baseline is a git revision (default 7e55a68), the
candidate the working tree; both run alternating in one run (CPU tensors, Triton's interpreter mode so
the tier accepts them, one thread).  Three levels:

* tier: the two kernel modules' forward/backward, in this process;
* op: the tier's ops called directly, in this process (the baseline's ``custom_op`` wrappers are
  rebuilt here under a scratch namespace around the baseline's launchers);
* module: the whole ``nn.Module`` call, inference and train step, each tree in a worker process of its
  own (scripts/triton_module_worker.py) that imports poolbench from that tree alone, a ``git archive``
  of the baseline revision: its front end, op layer, autograd and kernel module as they were.

The baseline's interpreter-only ε² tensor is replaced by the float the GPU path passes, so neither
side pays for it.  Times are the calling thread's CPU time (``time.thread_time``), not wall time: on a
shared machine wall time also counts the slices other processes held the core, which swamped the
difference being measured (per-round wall-time ratios spread 1.5-5x; CPU-time ratios within ±15%).

    python scripts/triton_host_cost.py [--base 7e55a68] [--shape 1,64,4,4] [--calls 500] [--rounds 21]
                                       [--levels tier,op,module]
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

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the tier then accepts CPU tensors
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from typing import Optional  # noqa: E402

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

import impls  # noqa: E402
import poolbench  # noqa: E402
import poolbench.impls  # noqa: E402
import poolbench.impls.dpp_triton  # noqa: E402,F401  (defines the tier's ops)

sys.path.insert(0, str(ROOT / "scripts"))
from triton_module_worker import stub_kernels  # noqa: E402


def _stubbed(module):
    stub_kernels(module)
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
    poolbench.impls.dpp_triton._LOADED = module  # the tier keeps the module it imported


class _Worker:
    """A triton_module_worker.py process serving one tree's module timings."""

    def __init__(self, tree: Path):
        self.process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "triton_module_worker.py"), str(tree)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tree,
                                        env={**os.environ, "PYTHONPATH": str(tree)})

    def wait_ready(self) -> None:
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the module worker for {self.process.args[-1]} did not start (see its error above)")

    def time(self, variant: str, shape, path: str, calls: int) -> float:
        self.process.stdin.write(f"{variant} {','.join(map(str, shape))} {path} {calls}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the module worker for {self.process.args[-1]} exited (see its error above)")
        return float(answer)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


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
    start = time.thread_time()
    for _ in range(calls):
        fn()
    return (time.thread_time() - start) / calls * 1e6


def _paired(rounds: int, timers: dict) -> tuple[dict, float]:
    """Median µs per call of each side and the median of the per-round ratios (first side / second).

    The sides alternate within every round, so a burst of machine load hits both alike; the ratio
    of each round is taken before the median, as scripts/host_cost.py does."""
    samples = {side: [] for side in timers}
    for _ in range(rounds):
        for side, timer in timers.items():
            samples[side].append(timer())
    first, second = samples.values()
    return ({side: statistics.median(values) for side, values in samples.items()},
            statistics.median(a / b for a, b in zip(first, second)))


def _row(name: str, path: str, paired: tuple[dict, float]) -> str:
    medians, ratio = paired
    return f"{name:<14} {path:<18} " + " ".join(f"{m:16.1f}" for m in medians.values()) + f"   {ratio:.2f}x"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="7e55a68", help="git revision of the baseline tree")
    parser.add_argument("--shape", default="1,64,4,4")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--variants", default="dpp_lite_sym,dpp_full_sym")
    parser.add_argument("--levels", default="tier,op,module", help="which levels to time (comma-separated)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shape = tuple(int(v) for v in args.shape.split(","))

    with tempfile.TemporaryDirectory() as folder:
        base_tree = Path(folder) / "base"
        base_tree.mkdir()
        archive = subprocess.run(["git", "archive", args.base], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base_tree)], input=archive, check=True)
        base = _stubbed(_load(base_tree / "impls" / "dpp_triton_kernels.py", "dpp_triton_kernels_base"))
        base_ops = _baseline_ops(base.forward, base.backward)
        new = _stubbed(_load(ROOT / "impls" / "dpp_triton_kernels.py", "dpp_triton_kernels_candidate"))
        _use(new)
        sides = (f"base {args.base}", "this tree")
        workers = (_Worker(base_tree), _Worker(ROOT))
        try:
            for worker in workers:
                worker.wait_ready()
            print(f"shape {shape}, {args.calls} calls x {args.rounds} rounds, kernels stubbed, 1 thread; "
                  f"median CPU µs per call, median of per-round ratios (A/B alternating)")
            print("tier: the kernel module's forward/backward; op: the tier's forward and backward ops called "
                  "directly (base: custom_op wrappers as in the base tree); module: the nn.Module call, inference "
                  "(no_grad) and train step (forward, backward), each tree whole in a worker process")
            print(f"{'variant':<14} {'path':<18} " + " ".join(f"{name:>16}" for name in sides) + "   ratio")
            for name in args.variants.split(","):
                _time_variant(name, shape, args, (base, new), base_ops, workers)
        finally:
            for worker in workers:
                worker.close()
    return 0


def _time_variant(name, shape, args, kernel_modules, base_ops, workers) -> None:
    x = torch.randn(shape)
    full = name.startswith("dpp_full")
    alpha, lam = torch.rand(shape[1]) + 0.5, torch.rand(shape[1])
    weight, bias = (torch.randn(shape[1], 1, 3, 3), torch.randn(shape[1])) if full else (None, None)
    options = (2, 2, 0, False, 1e-3, False)
    gy = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2)

    def tier_forward(kernels):
        return lambda: kernels.forward(x, alpha, lam, weight, bias, *options)

    def tier_train(kernels):
        def run():
            kernels.forward(x, alpha, lam, weight, bias, *options)
            kernels.backward(gy, x, alpha, lam, weight, bias, *options)
        return run

    this_ops = (torch.ops.poolbench_triton.dpp_forward, torch.ops.poolbench_triton.dpp_backward)

    def op_forward(ops):
        return lambda: ops[0](x, alpha, lam, weight, bias, *options)

    def op_train(ops):
        def run():
            ops[0](x, alpha, lam, weight, bias, *options)
            ops[1](gy, x, alpha, lam, weight, bias, *options)
        return run

    def timed(fn):
        def timer():
            fn()  # builds (and caches) the plan outside the timed calls
            return _time_per_call(fn, args.calls)
        return timer

    in_process = (("tier forward", tier_forward), ("tier fwd+bwd", tier_train),
                  ("op forward", op_forward), ("op fwd+bwd", op_train))
    levels = args.levels.split(",")
    for path, make in in_process:
        if path.split()[0] not in levels:
            continue
        pair = kernel_modules if path.startswith("tier") else (base_ops, this_ops)
        print(_row(name, path, _paired(args.rounds, {side: timed(make(subject))
                                                     for side, subject in zip("ab", pair)})), flush=True)
    for path, served in (("module forward", "forward"), ("module fwd+bwd", "train")):
        if "module" not in levels:
            continue
        timers = {side: (lambda worker=worker: worker.time(name, shape, served, args.calls))
                  for side, worker in zip("ab", workers)}
        print(_row(name, path, _paired(args.rounds, timers)), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
