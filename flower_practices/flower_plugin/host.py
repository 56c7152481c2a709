"""A plugin system for Flower 2.x: ``--plugins``, the ``flower.plugins`` entry points, and
a ``Flower`` subclass that installs the named plugins.

Flower has no plugin system and drops command-line options it does not define. Celery
imports every ``celery.commands`` entry point when its CLI starts (so ``celery ... flower``
and ``python -m flower`` import :mod:`.command`), which calls :func:`enable`:

* :func:`define_options` defines ``--plugins`` (and this package's plugin options) as tornado
  options next to Flower's, so Flower's own parsing accepts them from the command line
  (``--plugins=a,b``), the environment (``FLOWER_PLUGINS=a,b``) and ``flowerconfig.py``
  (``plugins = ["a", "b"]`` or ``plugins = "a,b"``);
* ``flower.command.Flower`` (the class the ``flower`` command instantiates) becomes
  :class:`PluginFlower`, which installs the named plugins; with none named it is plain Flower.

A plugin is a callable ``install(flower_app) -> object`` (the object may have ``start()`` and
``stop()``), found among :data:`BUILTIN` or the ``flower.plugins`` entry points. An unknown
name, or a plugin failing to install, stops start-up with a usage error (exit status 2).
This module is imported by every ``celery`` command: keep its imports to what Flower's own
``celery.commands`` entry point (``flower.command``) loads anyway.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

import click
import flower
import flower.command
from flower.app import Flower
from tornado.options import options

log = logging.getLogger("flower_practices.flower_plugin")

ENTRY_POINT_GROUP = "flower.plugins"

#: plugins shipped in this package (name -> "module:install")
BUILTIN: dict[str, str] = {
    "flower_practices": "flower_practices.flower_plugin.plugin:install",
}

#: what ``celery flower-practices`` installs when ``--plugins`` is not given
DEFAULT_PLUGINS = ("flower_practices",)

Installer = Callable[[Any], Any]

#: installed when no ``--plugins`` is given (empty for stock ``celery flower``)
_default_plugins: tuple[str, ...] = ()


# -- options ---------------------------------------------------------------------------------
def define_options() -> None:
    """Define ``plugins`` and the ``flower_practices`` plugin's options (idempotent).

    Plugin options are tornado options in the ``flower-practices`` group; add new ones here.
    """
    if "plugins" not in options:
        options.define("plugins", type=str, multiple=True, default=[],
                       group="flower-practices",
                       help="comma-separated Flower plugins to install, e.g. flower_practices")
    if "practices_config" not in options:
        options.define("practices_config", type=str, default=None, group="flower-practices",
                       help="TOML settings file of the flower_practices plugin")
    if "practices_state_dir" not in options:
        options.define("practices_state_dir", type=str, default=None,
                       group="flower-practices",
                       help="directory of the flower_practices state file keeping findings "
                            "across restarts (default: $XDG_STATE_HOME/flower-practices or "
                            "~/.local/state/flower-practices; 'none' disables)")
    if "practices_metrics_auth" not in options:
        options.define("practices_metrics_auth", type=bool, default=False,
                       group="flower-practices",
                       help="put Flower's /metrics behind Flower's --basic_auth/--auth "
                            "(Flower serves it unauthenticated by default)")


def requested_plugins(opts: Any, default: Iterable[str] = ()) -> list[str]:
    """Plugin names from the parsed options (``a,b`` lists split); ``default`` when none."""
    raw = getattr(opts, "plugins", None) or []
    if isinstance(raw, str):
        raw = [raw]
    names: list[str] = []
    for item in raw:
        for name in str(item).split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names or list(default)


# -- registry --------------------------------------------------------------------------------
class PluginError(ValueError):
    """A plugin name is unknown or its plugin failed to load."""


def known_plugins() -> list[str]:
    names = set(BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def resolve(name: str) -> Installer:
    """The install function of plugin ``name``."""
    if name in BUILTIN:
        module, _, attr = BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module), attr)
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


# -- the Flower application ------------------------------------------------------------------
class PluginFlower(Flower):
    """Flower that installs the plugins named by ``options.plugins`` once constructed."""

    def __init__(self, options: Any = None, capp: Any = None, events: Any = None,
                 io_loop: Any = None, plugins: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(options=options, capp=capp, events=events, io_loop=io_loop, **kwargs)
        names = (plugins if plugins is not None
                 else requested_plugins(self.options, _default_plugins))
        self.plugins: dict[str, Any] = {}
        if not names:
            return  # stock Flower: nothing requested, nothing changes
        try:
            installers = resolve_all(names)
        except PluginError as exc:
            log.error("%s", exc)
            raise click.UsageError(str(exc)) from exc
        for name, install in installers:
            try:
                self.plugins[name] = install(self)
            except ValueError as exc:  # a plugin's configuration or usage problem:
                # one line naming it, exit 2 (not Flower's whole usage text)
                click.echo(f"Error: Flower plugin {name}: {exc}", err=True)
                raise SystemExit(2) from exc
        log.info("Flower plugins active: %s (Flower %s)", ", ".join(self.plugins),
                 flower.__version__)

    def start(self) -> None:
        for plugin in self.plugins.values():
            start = getattr(plugin, "start", None)
            if start is not None:
                start()
        super().start()

    def stop(self) -> None:
        for plugin in self.plugins.values():
            stop = getattr(plugin, "stop", None)
            if stop is not None:
                stop()
        super().stop()


def enable(default: Iterable[str] | None = None) -> None:
    """Define the options and make ``flower.command`` build :class:`PluginFlower`.

    ``default``: plugins installed when ``--plugins`` is not given (``celery flower-practices``
    passes :data:`DEFAULT_PLUGINS`; stock ``celery flower`` installs none).
    """
    global _default_plugins
    define_options()
    if default is not None:
        _default_plugins = tuple(default)
    current = flower.command.Flower
    if not (isinstance(current, type) and issubclass(current, PluginFlower)):
        flower.command.Flower = PluginFlower
