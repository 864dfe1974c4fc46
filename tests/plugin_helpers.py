"""Loading a throw-away plugin module the way an installed third-party package is loaded.

The "one new file" promises (a pooler, a DPP tier, a metric, a network) are
proven by writing that single file to ``tmp_path`` and importing it through
the ``poolbench.impls`` entry-point group, with the registries restored after.
"""
from __future__ import annotations

import importlib.metadata
import sys
import textwrap

from poolbench import dpp, metrics, models, registry


def isolate_registries(monkeypatch) -> None:
    """Copy every registry a plugin can extend, so nothing leaks into other tests."""
    monkeypatch.setattr(registry, "_REGISTRY", {k: dict(v) for k, v in registry._REGISTRY.items()})
    monkeypatch.setattr(registry, "_TIER_ORDER", list(registry._TIER_ORDER))
    monkeypatch.setattr(registry, "_PLUGIN_ERRORS", {})
    monkeypatch.setattr(dpp, "_KERNELS", dict(dpp._KERNELS))
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    monkeypatch.setattr(metrics, "METRICS", dict(metrics.METRICS))


def load_plugin_file(monkeypatch, tmp_path, module_name: str, source: str) -> dict[str, str]:
    """Write ``source`` as ``module_name``.py, expose it as an entry point and load the plugins."""
    registry.load_plugins()  # the in-tree ones first, so only the new module is new
    isolate_registries(monkeypatch)
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint(module_name, module_name, registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [entry] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setitem(sys.modules, module_name, None)  # placeholder so monkeypatch removes it afterwards
    del sys.modules[module_name]
    errors = registry.load_plugins(force=True)
    return errors
