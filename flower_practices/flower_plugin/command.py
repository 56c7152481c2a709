"""``celery [-A proj] flower-practices [flower options] [--plugins=a,b] [--practices_config=F]``.

A thin wrapper around Flower's own ``flower`` command: the same option parsing (command line,
``FLOWER_*`` environment, ``flowerconfig.py``), plus ``--plugins`` (default
``flower_practices``) and ``--practices_config``. Imported by every ``celery`` invocation
(Celery loads all ``celery.commands`` entry points), so this module stays light.
"""

from __future__ import annotations

import click
from celery.bin.base import CeleryCommand


@click.command(cls=CeleryCommand, context_settings={"ignore_unknown_options": True})
@click.argument("tornado_argv", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def flower_practices(ctx: click.Context, tornado_argv: tuple[str, ...]) -> None:
    """Flower with plugins: --plugins=flower_practices[,...] plus every Flower option."""
    from flower.command import flower

    from .app import enable

    enable()
    flower.invoke(ctx)
