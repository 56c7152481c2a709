"""Loading the monitored Celery app: ``-A proj`` or a bare app for ``--broker URL``."""

from __future__ import annotations

import os
import sys

from celery import Celery


class AppLoadError(RuntimeError):
    """The ``-A`` app could not be imported; the message says why."""


#: attribute load_app sets on the app: where its broker URL came from (for evidence)
BROKER_SOURCE_ATTR = "flower_practices_broker_source"


def load_app(app_path: str | None, broker: str | None = None,
             result_backend: str | None = None) -> tuple[Celery, bool]:
    """Return ``(app, loaded)``; ``loaded`` is True when user code was imported.

    ``--broker``/``--result-backend`` override the app's own settings when both are given.
    """
    if app_path:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        from celery.app.utils import find_app

        try:
            app = find_app(app_path)
        except Exception as exc:
            raise AppLoadError(f"cannot load Celery app {app_path!r}: "
                               f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(app, Celery):
            raise AppLoadError(f"{app_path!r} is not a Celery app")
        if broker:
            app.conf.broker_url = broker
        setattr(app, BROKER_SOURCE_ATTR, "exporter --broker option (overrides the app's "
                "broker_url)" if broker else "app configuration (broker_url)")
        if result_backend:
            app.conf.result_backend = result_backend
        return app, True
    if not broker:
        raise AppLoadError("give --broker URL or -A/--app proj")
    app = Celery("flower_practices", broker=broker, backend=result_backend, set_as_current=False)
    setattr(app, BROKER_SOURCE_ATTR, "exporter --broker option")
    return app, False
