"""Input and geometry validation, done once in the shared front end.

Every tier trusts what passes here, so kernels need no checks of their own and
every pooler rejects bad input with the same clear message.
"""
from __future__ import annotations

import numbers

import torch

__all__ = ["check_geometry", "check_input", "pooled_size"]


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_geometry(kernel_size: int, stride: int, padding: int) -> tuple[int, int, int]:
    """Validate a square pooling window; returns it as plain ints.

    Padding is capped at half the window (as in ``torch.nn.functional``): a
    larger pad would create windows made only of padding, which have no value.
    """
    kernel_size = _check_positive_int("kernel_size", kernel_size)
    stride = _check_positive_int("stride", stride)
    if isinstance(padding, bool) or not isinstance(padding, numbers.Integral):
        raise TypeError(f"padding must be an int, got {type(padding).__name__} {padding!r}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding > kernel_size // 2:
        raise ValueError(f"padding must be at most kernel_size // 2 = {kernel_size // 2}, got padding={padding}")
    return kernel_size, stride, int(padding)


def pooled_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Output length of a pooling window sweep (floor mode)."""
    return (size + 2 * padding - kernel_size) // stride + 1


def check_input(x, channels: int | None, kernel_size: int, stride: int, padding: int) -> None:
    """Reject what no pooler can handle: wrong type, rank, dtype, channels, size."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got {x.dim()}-D tensor of shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"input must be a floating point tensor, got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"input has {x.shape[1]} channels but the pooler was built for {channels}")
    height, width = x.shape[-2:]
    if min(height, width) + 2 * padding < kernel_size:
        raise ValueError(
            f"window of size {kernel_size} is larger than the padded input "
            f"({height}x{width} plus padding {padding} on each side)"
        )
