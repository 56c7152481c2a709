"""The ``flower-practices`` command: ``exporter`` (and the other subcommands)."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import NoReturn

import click

from . import __version__
from .apploader import AppLoadError, load_app
from .brokers import broker_url_problem
from .check import DEFAULT_FAIL_ON, FAIL_ON_LEVELS
from .config import ConfigError, load_settings


def fail(message: str) -> NoReturn:
    """A usage or configuration error: one line on stderr, exit status 2."""
    click.echo(f"Error: {' '.join(str(message).split())}", err=True)
    sys.exit(2)


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
@click.option("--state-dir", envvar="FLOWER_PRACTICES_STATE_DIR", default=None,
              help="Directory of the state file keeping findings across restarts "
                   "(default: $XDG_STATE_HOME/flower-practices or "
                   "~/.local/state/flower-practices; '' or 'none' disables).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--web-config-file", "web_config_path", envvar="FLOWER_PRACTICES_WEB_CONFIG",
              default=None, help="Prometheus exporter web config (YAML): basic_auth_users "
                                 "(bcrypt) and tls_server_config.")
def exporter(broker: str | None, app_path: str | None, result_backend: str | None,
             config_path: str | None, host: str, port: int, state_dir: str | None,
             log_level: str, web_config_path: str | None) -> None:
    """Standalone Prometheus exporter: /metrics, /api/practices, /healthz.

    Stops cleanly on SIGINT, SIGTERM and SIGHUP (exit 0); a changed --config is applied by
    restarting. A bad config file, app or broker URL exits 2 with a one-line error.
    """
    setup_logging(log_level)
    web_config = None
    if web_config_path is not None:
        from .exporter.webconfig import WebConfigError, load_web_config

        try:
            web_config = load_web_config(web_config_path)
        except WebConfigError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
    try:
        settings = load_settings(config_path)
        app, loaded = load_app(app_path, broker, result_backend)
    except (ConfigError, AppLoadError) as exc:
        fail(str(exc))
    problem = broker_url_problem(str(app.conf.broker_read_url or app.conf.broker_url or ""))
    if problem:
        fail(problem)
    from .exporter.server import serve
    from .store import default_state_dir

    try:
        asyncio.run(serve(app, settings, app_loaded=loaded, host=host, port=port,
                          state_dir=default_state_dir() if state_dir is None else state_dir,
                          web_config=web_config))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    except ConfigError as exc:
        fail(str(exc))


@main.command()
@click.option("-A", "--app", "app_path", envvar="FLOWER_PRACTICES_APP", required=True,
              help="Celery app to audit (proj or proj.celery:app).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML file: [practices.<id>] enabled/severity/ignore_tasks apply to the "
                   "audit too.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Output format (text: one 'path:line: severity "
                                      "practice task: message' line per finding).")
@click.option("--fail-on", "fail_on", type=click.Choice(list(FAIL_ON_LEVELS)),
              default=DEFAULT_FAIL_ON, show_default=True,
              help="Exit 1 only when a finding of this severity or a more severe one is "
                   "found ('none': report only).")
def check(app_path: str, config_path: str | None, fmt: str, fail_on: str) -> None:
    """Static audit of the app's configuration.

    Exit status: 0 when nothing at or above --fail-on is found, 1 when something is,
    2 on a usage or configuration error (bad option, config file or app).
    """
    from .appinfo import snapshot_app
    from .check import audit, exit_status, locate, render_json, render_text

    try:
        settings = load_settings(config_path)
        app, _ = load_app(app_path)
        info = snapshot_app(app)
    except (ConfigError, AppLoadError) as exc:
        fail(str(exc))
    except Exception as exc:  # user code failing on import of its task modules
        fail(f"cannot read tasks of {app_path!r}: {type(exc).__name__}: {exc}")
    found = audit(info, settings, locate(app, app_path))
    render = render_json if fmt == "json" else render_text
    click.echo(render(info, found, fail_on))
    sys.exit(exit_status(found, fail_on))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5555, show_default=True, type=int,
              help="Port of the UI (Flower with the plugin) and /api/practices.")
@click.option("--metrics-port", default=9808, show_default=True, type=int,
              help="Port of /metrics (and /api/practices, /healthz).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def demo(host: str, port: int, metrics_port: int, log_level: str) -> None:
    """Embedded demo: in-memory broker, a worker, Flower and traffic breaking the practices."""
    setup_logging(log_level)
    from .demo.run import run_demo

    try:
        code = run_demo(host=host, port=port, metrics_port=metrics_port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}: {exc.strerror}") from exc
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
