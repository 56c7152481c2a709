"""Plugin names -> install functions: built-in plugins, then the ``flower.plugins`` entry points.

A plugin is a callable ``install(flower_app) -> object``. Unknown names raise
:class:`PluginError` naming the known ones, so a typo is an error, not silence.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "flower.plugins"

BUILTIN: dict[str, str] = {
    "flower_practices": "flower_practices.flower_plugin.plugin:install",
}

Installer = Callable[[Any], Any]


class PluginError(ValueError):
    """A plugin name is unknown or its plugin failed to load."""


def _load(ref: str) -> Installer:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def known_plugins() -> list[str]:
    names = set(BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def resolve(name: str) -> Installer:
    """The install function of plugin ``name``."""
    if name in BUILTIN:
        return _load(BUILTIN[name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as exc:
                raise PluginError(f"Flower plugin {name!r} failed to load: "
                                  f"{type(exc).__name__}: {exc}") from exc
    raise PluginError(f"unknown Flower plugin {name!r}; known plugins: "
                      f"{', '.join(known_plugins())}")


def resolve_all(names: list[str]) -> list[tuple[str, Installer]]:
    """Resolve every name first, so nothing is installed when one name is wrong."""
    return [(name, resolve(name)) for name in names]
