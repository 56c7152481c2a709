"""The ``flower-practices`` command: ``exporter`` (and the other subcommands)."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from . import __version__
from .apploader import AppLoadError, load_app
from .config import ConfigError, load_settings


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group()
@click.version_option(__version__, prog_name="flower-practices")
def main() -> None:
    """Flag Celery deployments that break well-known best practices."""


@main.command()
@click.option("--broker", "-b", envvar="CELERY_BROKER_URL", default=None,
              help="Broker URL to read events from (default: the app's broker_url).")
@click.option("-A", "--app", "app_path", envvar="FLOWER_PRACTICES_APP", default=None,
              help="Celery app (proj or proj.celery:app) to read config and tasks from.")
@click.option("--result-backend", envvar="CELERY_RESULT_BACKEND", default=None,
              help="Result backend URL (enables unread_results on Redis).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML file with [exporter] and [practices.<id>] settings.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=9808, show_default=True, type=int, help="Port to listen on.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def exporter(broker: str | None, app_path: str | None, result_backend: str | None,
             config_path: str | None, host: str, port: int, log_level: str) -> None:
    """Standalone Prometheus exporter: /metrics, /api/practices, /healthz."""
    setup_logging(log_level)
    try:
        settings = load_settings(config_path)
        app, loaded = load_app(app_path, broker, result_backend)
    except (ConfigError, AppLoadError) as exc:
        raise click.ClickException(str(exc)) from exc
    from .exporter.server import serve

    try:
        asyncio.run(serve(app, settings, app_loaded=loaded, host=host, port=port))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
