"""A plugin system for Flower 2.x: a ``Flower`` subclass that installs the requested plugins.

:func:`enable` makes Flower's ``flower`` command build :class:`PluginFlower` instead of
``Flower`` (it looks the class up in ``flower.command`` when it starts). Used by the
``celery flower-practices`` command and by ``import flower_practices.flower_plugin.activate``
in ``flowerconfig.py``. Unknown plugin names stop start-up with a usage error.
"""

from __future__ import annotations

import logging
from typing import Any

import click
import flower
import flower.command
from flower.app import Flower

from ..config import ConfigError
from .options import define_options, requested_plugins
from .registry import PluginError, resolve_all

log = logging.getLogger("flower_practices.flower_plugin")


class PluginFlower(Flower):
    """Flower that installs the plugins named by ``options.plugins`` once constructed."""

    def __init__(self, options: Any = None, capp: Any = None, events: Any = None,
                 io_loop: Any = None, plugins: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(options=options, capp=capp, events=events, io_loop=io_loop, **kwargs)
        names = plugins if plugins is not None else requested_plugins(self.options)
        try:
            installers = resolve_all(names)
        except PluginError as exc:
            log.error("%s", exc)
            raise click.UsageError(str(exc)) from exc
        self.plugins: dict[str, Any] = {}
        for name, install in installers:
            try:
                self.plugins[name] = install(self)
            except ConfigError as exc:  # one line naming the file and key, exit 2
                click.echo(f"Error: Flower plugin {name}: {exc}", err=True)
                raise SystemExit(2) from exc
            except PluginError as exc:
                log.error("Flower plugin %s: %s", name, exc)
                raise click.UsageError(f"Flower plugin {name}: {exc}") from exc
        log.info("Flower plugins active: %s (Flower %s)", ", ".join(self.plugins) or "(none)",
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


def enable() -> None:
    """Define the plugin options and make ``flower.command`` build :class:`PluginFlower`."""
    define_options()
    current = flower.command.Flower
    if not (isinstance(current, type) and issubclass(current, PluginFlower)):
        flower.command.Flower = PluginFlower
