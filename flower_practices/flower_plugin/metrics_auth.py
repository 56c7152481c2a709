"""``--practices_metrics_auth``: Flower's ``/metrics`` behind Flower's own auth.

Flower serves ``/metrics`` to anyone, even with ``--basic_auth`` or ``--auth`` set; with the
plugin it carries queue, task and worker names and findings. With the option on, the plugin
routes ``/metrics`` to :class:`ProtectedMetrics` (tornado matches rules added with
``add_handlers`` before the application's own): the same handler as Flower's, answering
``401`` unless Flower's ``get_current_user`` accepts the request (basic auth credentials, or
an OAuth session cookie — a machine scraper should use basic auth). Turning it on without
``--basic_auth`` or ``--auth`` is a start-up error: it would protect nothing.
"""

from __future__ import annotations

from typing import Any

from flower.views.monitor import Metrics
from tornado import web

from ..config import ConfigError


class ProtectedMetrics(Metrics):
    """Flower's ``/metrics`` handler, refused with 401 to unauthenticated requests."""

    async def get(self) -> None:
        if not self.current_user:  # basic auth: get_current_user raises 401 itself
            raise web.HTTPError(401)
        await super().get()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 401 and self.application.options.basic_auth:
            self.set_header("WWW-Authenticate", 'Basic realm="flower"')
        super().write_error(status_code, **kwargs)


def metrics_handlers(options: Any) -> list[Any]:
    """The ``/metrics`` override when ``practices_metrics_auth`` is on, else nothing."""
    if not getattr(options, "practices_metrics_auth", False):
        return []
    if not (getattr(options, "basic_auth", None) or getattr(options, "auth", None)):
        raise ConfigError("--practices_metrics_auth needs Flower's --basic_auth or --auth: "
                          "without them there is no auth to put /metrics behind")
    return [web.url(r"/metrics", ProtectedMetrics, name="practices_protected_metrics")]
