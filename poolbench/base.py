"""The base class every pooler module derives from.

It owns the window geometry and validates input once, in ``forward``, so that
each tier's ``pool`` only does the maths (torchvision's ops do the same: the
Python front end checks, the kernels trust).
"""
from __future__ import annotations

import torch
from torch import nn

from .validation import check_geometry, check_input, pooled_size

__all__ = ["Pool2d", "check_output_shape", "compute_dtype"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision a pooler computes in for ``dtype`` input: half precision (fp16, bf16) in float32.

    Exponentials, logs and window sums lose too much in 8–11 mantissa bits;
    every tier and baseline accumulates in float32 and casts the result back.
    float32 and float64 (gradcheck) compute in their own precision.
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_output_shape(what: str, x: torch.Tensor, y, channels: int, kernel_size: int, stride: int,
                       padding: int) -> None:
    """Raise if ``y`` is not what a k/s/p pooling layer must return for ``x``: wrong maths is never measured.

    The contract is the shape, the dtype and the device of ``x``: a pooler that returns float64 for
    float32 input (or a tensor on another device, e.g. ``meta``) would be timed doing other work than the
    baseline it is compared with, so its latencies would be wrong numbers, not slow ones.  Half-precision
    input may be computed in float32 (:func:`compute_dtype`) but must come back in its own dtype.
    """
    expected = (x.shape[0], channels, pooled_size(x.shape[2], kernel_size, stride, padding),
                pooled_size(x.shape[3], kernel_size, stride, padding))
    shape = tuple(y.shape) if isinstance(y, torch.Tensor) else None
    if shape != expected:
        got = f"shape {shape}" if shape is not None else f"a {type(y).__name__}, not a tensor,"
        raise RuntimeError(f"{what} returned {got} for input {tuple(x.shape)}; a k={kernel_size}, s={stride}, "
                           f"p={padding} pooling layer must return {expected} (H_out = (H + 2p - k) // s + 1)")
    if y.dtype != x.dtype:
        raise RuntimeError(f"{what} returned {_dtype_name(y.dtype)} for {_dtype_name(x.dtype)} input; a pooling "
                           f"layer must return its input's dtype (cast back after computing in another precision)")
    if y.device != x.device:
        raise RuntimeError(f"{what} returned a tensor on {y.device} for input on {x.device}; a pooling layer "
                           "must return its output on its input's device")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class Pool2d(nn.Module):
    """A 2-D pooling layer over ``channels`` feature maps with a square window.

    Subclasses implement :meth:`pool` for an already validated ``(N, C, H, W)``
    input and return ``(N, C, H_out, W_out)`` with
    ``H_out = (H + 2·padding − kernel_size) // stride + 1``.
    """

    def __init__(self, channels: int, kernel_size: int = 2, stride: int = 2, padding: int = 0):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.channels = channels
        self.kernel_size, self.stride, self.padding = check_geometry(kernel_size, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, self.kernel_size, self.stride, self.padding)
        y = self.pool(x)
        check_output_shape(f"{type(self).__name__}.pool", x, y, self.channels, self.kernel_size, self.stride,
                           self.padding)
        return y

    def __prepare_scriptable__(self):
        """``torch.jit.script`` calls this first: say plainly that TorchScript is not supported."""
        raise TypeError(f"{type(self).__name__}: TorchScript (torch.jit.script) is not supported by poolbench "
                        "poolers (their tiers dispatch in Python and to custom ops); use torch.compile, or "
                        "torch.export for deployment")

    def pool(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the output for an ``height × width`` input."""
        k, s, p = self.kernel_size, self.stride, self.padding
        return pooled_size(height, k, s, p), pooled_size(width, k, s, p)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
