"""The measured thing: one pooling call on one input, as zero-argument closures per pass.

One subject for every harness (the gate's timed cases, ``layerbench``): set-up
(input, upstream gradient, train/eval mode) happens here, outside the timed
region, and each closure does exactly the work the pooler owns.
"""
from __future__ import annotations

import contextlib
import statistics
from typing import Callable, Iterator, Sequence

import torch

from ..timing import saved_tensor_bytes, synchronize

__all__ = ["PASSES", "PassSubject", "paired_ratio", "torch_threads"]

#: "forward" is inference (eval mode, no autograd); "forward_backward" is a training step's
#: pooling work: train-mode forward plus the gradients of the input and every parameter.
PASSES = ("forward", "forward_backward")


class PassSubject:
    """``fn`` (a pooler module or function) on input ``x``, with closures for each pass.

    ``forward_backward`` computes the gradients of the input and ``params``
    with ``torch.autograd.grad`` against a fixed random upstream gradient (no
    ``.grad`` accumulation, which would add work the pooler does not own).
    ``module``, when given, is put in eval mode for ``forward`` and train mode
    for ``forward_backward``.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 params: Sequence[torch.Tensor] = (), module: torch.nn.Module | None = None, seed: int = 7):
        self.fn, self.module, self.params = fn, module, list(params)
        self.x = x
        self.x_train = x.detach().clone().requires_grad_(True)
        with torch.no_grad():
            out_shape = fn(x).shape
        generator = torch.Generator().manual_seed(seed)
        self.grad_out = torch.randn(out_shape, generator=generator).to(device=x.device, dtype=x.dtype)

    def forward(self) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(self.x)

    def train_step(self) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(self.fn(self.x_train), [self.x_train, *self.params], self.grad_out)

    def saved_bytes(self) -> int:
        """Bytes autograd saves for backward in one training forward (exact on any device)."""
        return saved_tensor_bytes(lambda: self.fn(self.x_train))

    def closure(self, pass_: str) -> Callable[[], None]:
        """A zero-argument closure running one ``pass_`` and waiting for the device (for timers)."""
        if pass_ not in PASSES:
            raise ValueError(f"pass must be one of {', '.join(PASSES)}, got {pass_!r}")
        if self.module is not None:
            self.module.train(pass_ == "forward_backward")
        step, device = (self.forward if pass_ == "forward" else self.train_step), self.x.device

        def run() -> None:
            step()
            synchronize(device)

        return run


def paired_ratio(mine: Sequence[float], theirs: Sequence[float]) -> float:
    """Median over rounds of (my time / the comparator's time in the same round); NaN if unpaired.

    Both were timed seconds apart, so load drift and one-off outliers cancel.
    """
    ratios = [a / b for a, b in zip(mine, theirs) if b > 0]
    return statistics.median(ratios) if ratios and len(mine) == len(theirs) else float("nan")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (``None``: unchanged), restoring it after."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
