"""The measurement core: cases, subjects, closures and ratios shared by the gate and ``layerbench``.

* :mod:`.config` – :class:`BenchConfig` (device, dtype, VGG-16 shapes, clock, budget) and the shared
  constants (the ``avg_pool2d`` comparator, the window geometry);
* :mod:`.cases` – :func:`bench_cases`, every registered (pooler, tier, layer shape, pass);
* :mod:`.subject` – :class:`PassSubject` (forward / train step / saved bytes), :func:`paired_ratio`,
  :func:`torch_threads`;
* :mod:`.closures` – :func:`case_closures`, the zero-argument closures for one case and pass.
"""
from .cases import BenchCase, bench_cases, comparator_cases, group_name
from .closures import build_module, case_closures, comparator, make_input, pass_closure
from .config import COMPARATOR, KERNEL_SIZE, PADDING, STRIDE, BenchConfig
from .subject import PASSES, PassSubject, paired_ratio, torch_threads

__all__ = [
    "COMPARATOR", "KERNEL_SIZE", "PADDING", "PASSES", "STRIDE", "BenchCase", "BenchConfig", "PassSubject",
    "bench_cases", "build_module", "case_closures", "comparator", "comparator_cases", "group_name",
    "make_input", "paired_ratio", "pass_closure", "torch_threads",
]
