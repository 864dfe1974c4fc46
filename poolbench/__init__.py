"""poolbench: a benchmark harness for pooling layers built around Detail-Preserving Pooling.

Public API::

    poolbench.create(name, channels, kernel_size=2, stride=2, padding=0, tier=None, **options)
    poolbench.names(), poolbench.tiers(name)
    poolbench.functional.dpp(x, alpha, lam, ...)
"""
from . import functional, macs
from .base import Pool2d
from .registry import TIERS, create, get_spec, load_plugins, names, register, specs, tiers

__version__ = "0.1.0"

__all__ = ["Pool2d", "TIERS", "create", "functional", "get_spec", "load_plugins", "names", "register", "specs", "tiers"]
