"""HTTP handlers of the standalone exporter: ``/metrics``, ``/api/practices``, ``/healthz``."""

from __future__ import annotations

import json

import tornado.web
from prometheus_client import CollectorRegistry

from ..engine import Engine
from ..events.sanitize import json_bytes
from ..metrics import render_metrics


class _EngineHandler(tornado.web.RequestHandler):
    def initialize(self, engine: Engine, registry: CollectorRegistry | None = None) -> None:
        self.engine = engine
        self.registry = registry


class MetricsHandler(_EngineHandler):
    def get(self) -> None:
        assert self.registry is not None
        body, content_type = render_metrics(self.registry,
                                            self.request.headers.get("Accept", ""),
                                            self.engine.metrics.render_errors)
        self.set_header("Content-Type", content_type)
        self.write(body)


class PracticesApiHandler(_EngineHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json_bytes(self.engine.practices_payload()))


class HealthHandler(_EngineHandler):
    def get(self) -> None:
        ok, reason = self.engine.health()
        self.set_status(200 if ok else 503)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"status": "ok" if ok else "unavailable", "reason": reason}))


class IndexHandler(_EngineHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(
            "<html><head><title>flower-practices exporter</title></head><body>"
            "<h1>flower-practices exporter</h1><ul>"
            '<li><a href="metrics">/metrics</a></li>'
            '<li><a href="api/practices">/api/practices</a></li>'
            '<li><a href="healthz">/healthz</a></li></ul></body></html>'
        )


def make_application(engine: Engine, registry: CollectorRegistry) -> tornado.web.Application:
    kwargs = {"engine": engine, "registry": registry}
    return tornado.web.Application([
        (r"/", IndexHandler, kwargs),
        (r"/metrics", MetricsHandler, kwargs),
        (r"/api/practices", PracticesApiHandler, kwargs),
        (r"/healthz", HealthHandler, kwargs),
    ])
