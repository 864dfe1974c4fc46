"""Host cost of one DPP call against ``nn.MaxPool2d``: ops dispatched per call and paired host time.

    PYTHONPATH=. python scripts/host_cost.py --tier cpp [--shape 1 64 4 4] [--variant dpp_lite_sym]

On a tiny input, (1, 64, 4, 4) by default, a call's time is almost all host
work (Python, dispatch, autograd, allocation), which on a GPU decides the small
layers.  For the DPP module of ``--tier`` and for ``nn.MaxPool2d(k, s, p)`` it
reports

* the ops a call dispatches, counted with a ``TorchDispatchMode`` (every op that
  reaches the dispatcher from Python, ops inside a custom op's kernel excluded):
  an inference call (``torch.no_grad``) and a train step (forward,
  ``.sum().backward()``);
* the median time of each, timed paired: the two modules alternate in one
  loop of rounds so machine load hits both alike, one thread, and the ratio
  DPP / max pooling per round, of which the median is reported.

``measure(tier, ...)`` is the library entry point (tests use :func:`count_ops`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

__all__ = ["count_ops", "measure", "main"]


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket._qualified_op_name if hasattr(func, "overloadpacket") else func))
        return func(*args, **(kwargs or {}))


def _inference(module, x):
    with torch.no_grad():
        return module(x)


def _train_step(module, x):
    module.zero_grad(set_to_none=True)
    x.grad = None
    module(x).sum().backward()


def count_ops(module: nn.Module, x: torch.Tensor, train: bool = False) -> list[str]:
    """The ops (``namespace::name``) one inference call or train step dispatches, after a warm-up call."""
    step = _train_step if train else _inference
    step(module, x)
    with _OpRecorder() as recorder:
        step(module, x)
    return recorder.ops


def _time(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure(tier: str = "cpp", shape=(1, 64, 4, 4), variant: str = "dpp_lite_sym", kernel_size: int = 2,
            stride: int = 2, padding: int = 0, rounds: int = 101, repeats: int = 50) -> dict:
    """Ops per call and paired host times (µs) of ``variant`` on ``tier`` against ``nn.MaxPool2d``."""
    import poolbench

    torch.set_num_threads(1)
    channels = shape[1]
    dpp = poolbench.create(variant, channels, kernel_size, stride, padding, tier=tier)
    pool = nn.MaxPool2d(kernel_size, stride, padding)
    x_dpp = torch.randn(*shape, requires_grad=True)
    x_max = x_dpp.detach().clone().requires_grad_(True)
    result = {
        "tier": tier, "variant": variant, "shape": tuple(shape),
        "ops_inference": count_ops(dpp, x_dpp), "ops_train": count_ops(dpp, x_dpp, train=True),
        "max_ops_inference": count_ops(pool, x_max), "max_ops_train": count_ops(pool, x_max, train=True),
    }
    for mode, step, n in (("inference", _inference, repeats), ("train", _train_step, max(repeats // 5, 10))):
        for _ in range(3):  # warm-up
            step(dpp, x_dpp), step(pool, x_max)
        dpp_times, max_times, ratios = [], [], []
        for _ in range(rounds):
            t_dpp = _time(lambda: step(dpp, x_dpp), n)
            t_max = _time(lambda: step(pool, x_max), n)
            dpp_times.append(t_dpp)
            max_times.append(t_max)
            ratios.append(t_dpp / t_max)
        result[f"{mode}_us"] = statistics.median(dpp_times) * 1e6
        result[f"max_{mode}_us"] = statistics.median(max_times) * 1e6
        result[f"{mode}_ratio"] = statistics.median(ratios)
        # On a loaded machine the fastest rounds are the least disturbed: their ratio as a cross-check.
        result[f"{mode}_min_ratio"] = min(dpp_times) / min(max_times)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", default="cpp")
    parser.add_argument("--variant", default="dpp_lite_sym")
    parser.add_argument("--shape", type=int, nargs=4, default=(1, 64, 4, 4), metavar=("N", "C", "H", "W"))
    parser.add_argument("--kernel-size", type=int, default=2)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--padding", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=101)
    parser.add_argument("--repeats", type=int, default=50, help="calls per timed block (a round times one block "
                        "of each module)")
    args = parser.parse_args(argv)
    r = measure(args.tier, tuple(args.shape), args.variant, args.kernel_size, args.stride, args.padding,
                args.rounds, args.repeats)
    print(f"{r['variant']} on {r['tier']}, input {r['shape']}, one thread, paired with nn.MaxPool2d")
    print(f"ops per inference call: {len(r['ops_inference'])} {r['ops_inference']} "
          f"(max pool: {len(r['max_ops_inference'])})")
    print(f"ops per train step:     {len(r['ops_train'])} {r['ops_train']} (max pool: {len(r['max_ops_train'])})")
    for mode in ("inference", "train"):
        print(f"{mode:9s}: {r[f'{mode}_us']:7.1f} us vs max pool {r[f'max_{mode}_us']:6.1f} us -> "
              f"{r[f'{mode}_ratio']:.2f}x (median of paired ratios; fastest rounds: "
              f"{r[f'{mode}_min_ratio']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
