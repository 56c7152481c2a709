"""The ``celery.commands`` entry point: ``--plugins`` for stock ``celery flower``, and
``celery [-A proj] flower-practices [flower options] [--plugins=a,b] [--practices_config=F]``.

Celery imports this module whenever its CLI starts (every ``celery`` command, and
``python -m flower``, which runs Celery's CLI). Importing it calls :func:`.host.enable`, so
Flower's own ``flower`` command accepts ``--plugins`` and installs the named plugins; without
``--plugins`` Flower is unchanged. Kept light: bench/plugin_import.py measures its cost.

``flower-practices`` is Flower's ``flower`` command with ``--plugins`` defaulting to
``flower_practices``.
"""

from __future__ import annotations

import click
from celery.bin.base import CeleryCommand

from .host import DEFAULT_PLUGINS, enable

enable()


@click.command(cls=CeleryCommand, context_settings={"ignore_unknown_options": True})
@click.argument("tornado_argv", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def flower_practices(ctx: click.Context, tornado_argv: tuple[str, ...]) -> None:
    """Flower with plugins: --plugins=flower_practices[,...] plus every Flower option."""
    from flower.command import flower

    enable(default=DEFAULT_PLUGINS)
    flower.invoke(ctx)
