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

from .timing import saved_tensor_bytes, synchronize

__all__ = ["AMP", "PASSES", "PassSubject", "autocast", "check_amp", "channels_last", "paired_ratio", "torch_threads"]

#: ``--amp`` choices: the autocast dtype a run's forwards and training steps run under (``off``: none).
AMP = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str) -> None:
    if amp not in AMP:
        raise ValueError(f"amp must be one of {', '.join(AMP)}, got {amp!r}")


def autocast(amp: str, device: torch.device | str):
    """``torch.autocast`` for ``amp`` on ``device``'s type, as people train (a no-op context for ``off``)."""
    check_amp(amp)
    if AMP[amp] is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP[amp])


def channels_last(module: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """Put ``module``'s 4-D parameters and buffers and ``x`` in channels-last memory format; returns the new x."""
    if module is not None:
        module.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

#: "forward" is inference (eval mode, no autograd); "forward_backward" is a training step's
#: pooling work: train-mode forward plus the gradients of the input and every parameter.
PASSES = ("forward", "forward_backward")


class PassSubject:
    """``fn`` (a pooler module, a function or a whole network) on input ``x``, with closures for each pass.

    ``forward_backward`` computes the gradients of ``params`` and, with
    ``input_grad`` (a layer inside a network), of the input, with
    ``torch.autograd.grad`` against a fixed random upstream gradient (no
    ``.grad`` accumulation, which would add work the module does not own).
    A network's training step has no input gradient: ``input_grad=False``.
    ``module``, when given, is put in eval mode for ``forward`` and train mode
    for ``forward_backward``.  ``amp`` (a key of :data:`AMP`) runs the forward
    of both passes under ``torch.autocast``; the backward runs outside it, as
    in a training loop.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 params: Sequence[torch.Tensor] = (), module: torch.nn.Module | None = None, seed: int = 7,
                 *, input_grad: bool = True, amp: str = "off"):
        check_amp(amp)
        self.fn, self.module, self.params, self.amp = fn, module, list(params), amp
        self.x = x
        self.x_train = x.detach().clone().requires_grad_(input_grad)
        self.differentiated = ([self.x_train] if input_grad else []) + self.params
        self.seed = seed
        self._grad_out: torch.Tensor | None = None

    @property
    def grad_out(self) -> torch.Tensor:
        """The fixed upstream gradient, made on first use: an inference-only subject never runs a training forward."""
        if self._grad_out is None:
            if self.module is not None:
                self.module.train()
            with torch.no_grad(), autocast(self.amp, self.x.device):
                out = self.fn(self.x)
            generator = torch.Generator().manual_seed(self.seed)
            # in the output's dtype and memory format (autocast may change the first, channels-last the second)
            self._grad_out = torch.randn(out.shape, generator=generator).to(device=out.device, dtype=out.dtype)
            if out.dim() == 4 and out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous():
                self._grad_out = self._grad_out.contiguous(memory_format=torch.channels_last)
        return self._grad_out

    def forward(self) -> torch.Tensor:
        with torch.no_grad(), autocast(self.amp, self.x.device):
            return self.fn(self.x)

    def train_step(self) -> tuple[torch.Tensor, ...]:
        with autocast(self.amp, self.x.device):
            out = self.fn(self.x_train)
        # allow_unused: a plugin may hold a parameter its forward does not use (its gradient is None).
        # The gradients are returned, never accumulated into .grad: a CUDA-graph replay of this step
        # needs nothing zeroed between replays.
        return torch.autograd.grad(out, self.differentiated, self.grad_out, allow_unused=True)

    def training_forward(self) -> torch.Tensor:
        """A train-mode forward with autograd recording: what a training step keeps for backward."""
        if self.module is not None:
            self.module.train()
        with autocast(self.amp, self.x.device):
            return self.fn(self.x_train)

    def saved_bytes(self, exclude: Sequence[torch.Tensor] = ()) -> int:
        """Bytes autograd saves for backward in one training forward (exact on any device).

        Tensors sharing storage with ``exclude`` (a network's weights, which
        exist anyway) are not counted.
        """
        return saved_tensor_bytes(self.training_forward, exclude=exclude)

    def step(self, pass_: str) -> Callable[[], object]:
        """The raw ``pass_`` step, module mode set and upstream gradient made: what a CUDA graph captures.

        It does not wait for the device (a capture cannot synchronize); CUDA-event timers need no wait.
        """
        if pass_ not in PASSES:
            raise ValueError(f"pass must be one of {', '.join(PASSES)}, got {pass_!r}")
        if pass_ == "forward_backward":
            self.grad_out  # noqa: B018 -- made here, outside the timed calls
        if self.module is not None:
            self.module.train(pass_ == "forward_backward")
        return self.forward if pass_ == "forward" else self.train_step

    def closure(self, pass_: str) -> Callable[[], None]:
        """A zero-argument closure running one ``pass_`` and waiting for the device (for timers)."""
        step, device = self.step(pass_), self.x.device

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
