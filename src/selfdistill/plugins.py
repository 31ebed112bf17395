"""Plug-ins: modules outside the package that register methods, models, datasets or tasks when imported.

A run config lists them under ``plugins:`` (``selfdistill train --plugin MODULE`` adds to the list), and installed
packages declare them in the ``selfdistill.plugins`` entry-point group. Either way a plug-in is a module imported
for its registrations (``@register_method``, ``@register_model``, ``@register_dataset``, ``@register_task``)
before a config is validated.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

ENTRY_POINT_GROUP = "selfdistill.plugins"
_entry_points_loaded = False


class PluginError(ImportError):
    """A plug-in module could not be imported; the message names it and says where Python looked."""


def _import_file(path: Path) -> ModuleType:
    """Import a ``.py`` file as a module of its own (once per resolved path)."""
    resolved = path.resolve()
    name = f"selfdistill_plugin_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    if not resolved.is_file():
        raise PluginError(f"plug-in file not found: {path} (a path is read relative to the working directory)")
    spec = importlib.util.spec_from_file_location(name, resolved)
    assert spec is not None and spec.loader is not None  # a .py file always has a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_plugin(spec: str) -> ModuleType:
    """Import one plug-in: a module name (``my_pkg.my_methods``, found on ``sys.path``/``PYTHONPATH``) or the path
    of a ``.py`` file. A failure raises :class:`PluginError` naming the plug-in and the cause."""
    try:
        if spec.endswith(".py"):
            return _import_file(Path(spec))
        return importlib.import_module(spec)
    except PluginError:
        raise
    except Exception as exc:
        hint = (" (is the folder holding it on PYTHONPATH? A file can be given by its path, e.g. "
                "plugins/my_methods.py)" if isinstance(exc, ModuleNotFoundError) and exc.name == spec.split(".")[0]
                else "")
        raise PluginError(f"plug-in '{spec}' failed to import: {type(exc).__name__}: {exc}{hint}") from exc


def load_entry_points() -> None:
    """Import every plug-in that an installed package declares in the ``selfdistill.plugins`` entry-point group
    (once per process)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:
            dist = f" of package '{ep.dist.name}'" if ep.dist is not None else ""
            raise PluginError(f"plug-in entry point '{ep.name}' ({ep.value}){dist} failed to import: "
                              f"{type(exc).__name__}: {exc}") from exc


def import_plugins(specs: Iterable[str]) -> None:
    """Import the installed packages' plug-ins (once), then each of ``specs`` (module names or ``.py`` paths)."""
    load_entry_points()
    for spec in specs:
        import_plugin(spec)
