"""The benchmark configuration (:class:`BenchConfig`) and the constants every part shares.

One place for what a ratio is relative to (``avg_pool2d``), the passes, and
the VGG-16 pooling geometry, so that cases, timing, equivalence and comparison
cannot drift apart.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .shapes import vgg16_pool_shapes
from .subject import PASSES

#: What every ratio is relative to: ATen's average pooling on the same input and pass.
COMPARATOR = "avg_pool2d"
#: VGG-16's pooling layers are all MaxPool2d(2, 2).
KERNEL_SIZE, STRIDE, PADDING = 2, 2, 0


@dataclass(frozen=True)
class BenchConfig:
    """How the suite measures; stored in every benchmark's ``extra_info`` and compared.

    ``batch`` and ``resolution`` pick the VGG-16 pooling shapes
    (:func:`poolbench.measure.shapes.vgg16_pool_shapes`); ``threads`` is the CPU
    thread count (1 by default: on a shared 2-core machine a second thread
    mostly measures the neighbours); ``budget_s`` is the time one case may
    spend timing (pooler + comparator), within ``min_rounds``–``max_rounds``;
    ``crop`` bounds the spatial size at which slow float64 reference tiers
    are run for the equivalence check.
    """

    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    resolution: int = 224
    threads: int = 1
    budget_s: float = 0.25
    min_rounds: int = 5
    max_rounds: int = 400
    crop: int = 24
    seed: int = 0
    clock: str = "auto"

    #: Fields that change what a ratio means: a baseline is only comparable when they agree.
    IDENTITY = ("device", "dtype", "batch", "resolution", "threads", "clock")

    def __post_init__(self):
        for name in ("batch", "resolution", "threads", "min_rounds", "max_rounds", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.resolution < 32:
            raise ValueError(f"resolution must be >= 32 so that all five VGG-16 pooling layers exist, got {self.resolution}")
        if not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s!r}")
        if self.max_rounds < self.min_rounds:
            raise ValueError(f"max_rounds ({self.max_rounds}) must be >= min_rounds ({self.min_rounds})")
        if self.crop < 2 * KERNEL_SIZE:
            raise ValueError(f"crop must be at least {2 * KERNEL_SIZE}, got {self.crop}")
        if self.clock not in ("auto", "cpu", "wall"):
            raise ValueError(f"clock must be 'auto', 'cpu' or 'wall', got {self.clock!r}")
        if self.clock == "cpu" and (self.device != "cpu" or self.threads != 1):
            raise ValueError("clock='cpu' (process CPU time) needs device 'cpu' and threads=1: "
                             "GPU work and extra threads do not show in this process's CPU time as wall time")
        if self.clock == "auto":
            # CPU time of a single-threaded CPU run ignores the time other processes hold
            # the core, which on a shared machine is most of the noise.
            object.__setattr__(self, "clock", "cpu" if self.device == "cpu" and self.threads == 1 else "wall")

    @property
    def timer(self) -> Callable[[], float]:
        """The clock every round is read with: ``time.process_time`` ("cpu") or ``time.perf_counter`` ("wall")."""
        return time.process_time if self.clock == "cpu" else time.perf_counter

    @property
    def timer_name(self) -> str:
        return "time.process_time" if self.clock == "cpu" else "time.perf_counter"

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must name a floating point torch dtype, got {self.dtype!r}")
        return dtype

    def identity(self) -> dict:
        return {name: getattr(self, name) for name in self.IDENTITY}

    def shapes(self) -> list[tuple[int, int, int, int]]:
        return vgg16_pool_shapes(self.batch, self.resolution)
