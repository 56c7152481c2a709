"""HTTP handlers of the standalone exporter: ``/metrics``, ``/api/practices``, ``/healthz``.

``/metrics`` is served from a :class:`~.cache.RenderCache` (one rendering per format per
``metrics_cache_seconds``, rendered off the event loop), and so is ``/api/practices``
(one document per ``metrics_cache_seconds``, built off the event loop and shared by the
requests that arrive meanwhile): a flood of requests costs one build per interval, not
one per request on the event loop and under the engine's lock. With a web configuration file that
lists ``basic_auth_users`` every endpoint requires basic auth except ``/healthz``, which
stays open for load balancers and liveness probes (it tells only whether the event stream
is connected, and why not).
"""

from __future__ import annotations

import gc
import gzip
import json
from collections.abc import Callable

import tornado.web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from ..api import health_document, practices_document
from ..engine import Engine
from ..events.sanitize import json_bytes
from ..metrics import choose_format, render_metrics
from .cache import RenderCache
from .webconfig import BasicAuth

#: distinct negotiated formats (content type + version + escaping) rendered and cached;
#: clients asking for yet another one get the plain text format
MAX_FORMATS = 8
#: the /api/practices cache's one key
API_KEY = "api/practices"
#: zlib level for gzip responses: 6 (zlib's default) is ~2x faster than 9 for 1-2 % more bytes
GZIP_LEVEL = 6


class _EngineHandler(tornado.web.RequestHandler):
    #: endpoints that stay open when basic auth is configured
    open_endpoint = False

    def initialize(self, engine: Engine, auth: BasicAuth | None = None) -> None:
        self.engine = engine
        self.auth = auth

    async def prepare(self) -> None:
        if self.auth is None or self.open_endpoint:
            return
        ok = await self.auth.check(self.request.headers.get("Authorization", ""))
        if ok is None:  # a flood of bcrypt checks: refuse rather than queue
            raise tornado.web.HTTPError(503)
        if not ok:
            raise tornado.web.HTTPError(401)

    def write_error(self, status_code: int, **kwargs: object) -> None:
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Basic realm="flower-practices"')
        elif status_code == 503:
            self.set_header("Retry-After", "1")
        super().write_error(status_code, **kwargs)

    def compute_etag(self) -> str | None:
        return None  # a SHA-1 of every response body, on the event loop, for nobody


class MetricsHandler(_EngineHandler):
    def initialize(self, engine: Engine, auth: BasicAuth | None = None,  # type: ignore[override]
                   cache: RenderCache | None = None,
                   formats: dict[str, Callable] | None = None) -> None:
        super().initialize(engine, auth)
        assert cache is not None and formats is not None
        self.cache = cache
        self.formats = formats

    async def get(self) -> None:
        encoder, content_type = choose_format(self.request.headers.get("Accept", ""))
        if content_type not in self.formats:
            if len(self.formats) >= MAX_FORMATS:
                content_type = CONTENT_TYPE_PLAIN_0_0_4
            else:
                self.formats[content_type] = encoder
        gzipped = accepts_gzip(self.request.headers.get("Accept-Encoding", ""))
        body = await self.cache.get((content_type, gzipped))
        self.set_header("Content-Type", content_type)
        self.set_header("Vary", "Accept-Encoding")
        if gzipped:
            self.set_header("Content-Encoding", "gzip")
        self.set_header("Content-Length", str(len(body)))
        # headers first: written together, tornado would copy the body into the header
        # buffer once per response; written alone, every scraper shares the one bytes object
        await self.flush()
        self.write(body)


class PracticesApiHandler(_EngineHandler):
    def initialize(self, engine: Engine, auth: BasicAuth | None = None,  # type: ignore[override]
                   cache: RenderCache | None = None) -> None:
        super().initialize(engine, auth)
        assert cache is not None
        self.cache = cache

    async def get(self) -> None:
        body = await self.cache.get(API_KEY)
        self.set_header("Content-Type", "application/json")
        self.write(body)


class HealthHandler(_EngineHandler):
    open_endpoint = True

    def get(self) -> None:
        code, doc = health_document(self.engine)
        self.set_status(code)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(doc))


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


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip (Prometheus always sends it)."""
    for item in header.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip"):
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00",
                                                           "q=0.000")
    return False


def metrics_cache(registry: CollectorRegistry, max_age: float,
                  errors: dict[str, int] | None = None
                  ) -> tuple[RenderCache, dict[str, Callable]]:
    """A render cache keyed by (content type, gzip) and the format table it renders from.

    Compression runs in the render thread, once per rendering: a 2.5 MB page becomes
    ~0.2 MB, so hundreds of Prometheus scrapers (which all ask for gzip) cost the event
    loop a tenth of the bytes to send.
    """
    formats: dict[str, Callable] = {CONTENT_TYPE_PLAIN_0_0_4: generate_latest}

    def render(key: object) -> bytes:
        content_type, gzipped = key  # type: ignore[misc]
        return render_body(registry, content_type, gzipped, errors)

    return RenderCache(render, max_age), formats


def render_body(registry: CollectorRegistry, content_type: str, gzipped: bool = False,
                errors: dict[str, int] | None = None) -> bytes:
    """One ``/metrics`` body as the render cache makes it (what ``bench/`` times)."""
    # no cycle collection while the render's ~10^5 objects are alive: one would walk
    # them all holding the GIL (tens of ms, the /healthz lane waiting; measured: a
    # 25 ms render took 40 ms every 4th-5th time); reference counting frees them when
    # the render ends, and the next collection is small
    enabled = gc.isenabled()
    gc.disable()
    try:
        # family by family: one that cannot render is left out and counted in ``errors``
        body, _ = render_metrics(registry, content_type, errors)
    finally:
        if enabled:
            gc.enable()
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0) if gzipped else body


def make_application(engine: Engine, registry: CollectorRegistry, *,
                     auth: BasicAuth | None = None) -> tornado.web.Application:
    """The exporter's application; its render caches are ``application.metrics_cache``
    and ``application.api_cache``."""
    cache, formats = metrics_cache(registry, engine.settings.metrics_cache_seconds,
                                   engine.metrics.render_errors)
    api_cache = RenderCache(lambda _: json_bytes(practices_document(engine)),
                            engine.settings.metrics_cache_seconds)
    kwargs = {"engine": engine, "auth": auth}
    application = tornado.web.Application([
        (r"/", IndexHandler, kwargs),
        (r"/metrics", MetricsHandler, {**kwargs, "cache": cache, "formats": formats}),
        (r"/api/practices", PracticesApiHandler, {**kwargs, "cache": api_cache}),
        (r"/healthz", HealthHandler, kwargs),
    ])
    application.metrics_cache = cache  # type: ignore[attr-defined]
    application.api_cache = api_cache  # type: ignore[attr-defined]
    return application
