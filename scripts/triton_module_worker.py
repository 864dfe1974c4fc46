"""Time the triton tier's nn.Module call of one source tree, kernels stubbed: the worker of triton_host_cost.py.

    python scripts/triton_module_worker.py TREE

imports poolbench (and its in-tree plugins) from the checkout TREE alone, so a baseline revision's
module, op layer, autograd and kernel module all take part, as they did at that revision.  It says
``ready``, then answers lines ``variant shape path calls`` on stdin (path: ``forward`` for an
inference call under ``no_grad``, ``train`` for ``module(x).backward(gy)``) with the mean CPU µs per
call (this thread's ``time.thread_time``) on stdout, the first call of each path run untimed (it
builds and caches the launch plan).  The Triton kernels are replaced by no-op launchers before the
first call, and the interpreter-only ε² tensor by the float the GPU path passes, as in the parent
script.
"""
from __future__ import annotations

import os
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the tier then accepts CPU tensors
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


def stub_kernels(kernels) -> None:
    """No-op launchers in place of ``kernels``' Triton kernels; ε² passed as a float."""
    for name in KERNELS:
        setattr(kernels, name, _NoLaunch(getattr(kernels, name)))
    if hasattr(kernels, "_eps2_argument"):
        kernels._eps2_argument = lambda eps2, *device: float(eps2)


def _subject(poolbench, torch, variant: str, shape):
    module = poolbench.create(variant, shape[1], 2, 2, 0, tier="triton")
    x = torch.randn(shape)
    xg = x.clone().requires_grad_()
    gy = torch.randn(module(x).shape)

    def forward():
        with torch.no_grad():
            module(x)

    def train():
        module(xg).backward(gy)

    return {"forward": forward, "train": train}


def main(tree: str) -> int:
    sys.path.insert(0, tree)
    import torch

    import poolbench
    from poolbench.dpp import get_kernel

    torch.set_num_threads(1)
    kernel = get_kernel("triton")
    tier = sys.modules[kernel.__module__]
    stub_kernels(tier._kernels(torch.empty(0)))  # the kernel module, imported as the tier imports it
    print("ready", flush=True)  # the parent times nothing while a worker is still importing
    subjects = {}
    for line in sys.stdin:
        variant, shape, path, calls = line.split()
        key = (variant, shape)
        if key not in subjects:
            subjects[key] = _subject(poolbench, torch, variant, tuple(int(v) for v in shape.split(",")))
        fn = subjects[key][path]
        fn()
        start = time.thread_time()
        for _ in range(int(calls)):
            fn()
        print((time.thread_time() - start) / int(calls) * 1e6, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
