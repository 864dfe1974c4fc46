"""poolbench: a benchmark harness for pooling layers built around Detail-Preserving Pooling.

Public API::

    poolbench.create(name, channels, kernel_size=2, stride=2, padding=0, tier=None, **options)
    poolbench.names(), poolbench.tiers(name)
    poolbench.functional.dpp(x, alpha, lam, ...)
"""
import importlib.util as _importlib_util
import sys as _sys
from pathlib import Path as _Path


def _map_in_tree_plugins() -> None:
    """Make the repository's ``impls/`` folder importable as ``poolbench.impls`` when running from a checkout.

    A wheel installs the folder as ``poolbench/impls`` (setup.py's package-dir). A checkout
    (``PYTHONPATH=. python -m poolbench``, or an editable install) maps the folder beside this package,
    even when another checkout is installed: the plugins always come from the tree poolbench itself
    was imported from.
    """
    root = _Path(__file__).resolve().parent.parent
    folder = root / "impls"
    if not ((root / "setup.py").is_file() and (folder / "__init__.py").is_file()):
        return  # an installed wheel: poolbench/impls is a regular subpackage
    spec = _importlib_util.spec_from_file_location(f"{__name__}.impls", folder / "__init__.py",
                                                   submodule_search_locations=[str(folder)])
    module = _importlib_util.module_from_spec(spec)
    _sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    globals()["impls"] = module


_map_in_tree_plugins()

from . import functional, macs  # noqa: E402
from .base import Pool2d  # noqa: E402
from .registry import TIERS, create, get_spec, load_plugins, names, register, specs, tiers  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Pool2d", "TIERS", "create", "functional", "get_spec", "load_plugins", "names", "register", "specs", "tiers"]
