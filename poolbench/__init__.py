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
    """Make the repository's ``impls/`` folder importable as ``poolbench.impls`` in a source checkout.

    An install maps the folder there (``pyproject.toml``'s package-dir); a run from the source tree
    (``PYTHONPATH=. python -m poolbench``, as on a machine without the package installed) has no
    install, so the same name is given to the folder beside this package.  The folder beside the
    package wins over an install's mapping: a second checkout (a git worktree) run with
    ``PYTHONPATH`` must measure its own plugins, not those of the checkout that is installed.
    """
    folder = _Path(__file__).resolve().parent.parent / "impls"
    if not (folder / "__init__.py").is_file():
        return  # an installed package: its mapping (or its own poolbench/impls) serves the name
    installed = _importlib_util.find_spec(f"{__name__}.impls")
    if installed is not None and installed.submodule_search_locations is not None and \
            any(_Path(location).resolve() == folder for location in installed.submodule_search_locations):
        return
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
