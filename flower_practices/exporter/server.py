"""Run the standalone exporter: engine threads plus the HTTP server on the main IOLoop."""

from __future__ import annotations

import asyncio
import logging
import signal

from celery import Celery
from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from ..config import Settings
from ..metrics import PracticesCollector
from ..runtime import EngineRunner, build_engine
from .handlers import make_application

log = logging.getLogger("flower_practices.exporter")


def make_registry(engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PracticesCollector(engine))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def _stopper(stop: asyncio.Event, sig: signal.Signals):
    def handle() -> None:
        log.info("received %s: stopping", sig.name)
        stop.set()
    return handle


async def serve(app: Celery, settings: Settings, *, app_loaded: bool, host: str, port: int,
                ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None)."""
    engine = build_engine(app, settings, app_loaded=app_loaded)
    runner = EngineRunner(app, engine)
    registry = make_registry(engine)
    application = make_application(engine, registry)
    server = application.listen(port, address=host, xheaders=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        # SIGHUP stops cleanly too (no reload: a changed config is applied by a restart)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, _stopper(stop, sig))
    except (RuntimeError, ValueError):  # not the main thread (tests)
        pass
    runner.start()
    shown_host = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    log.info("exporter listening on http://%s:%d (/metrics, /api/practices, /healthz)",
             shown_host, port)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("stopping exporter")
        server.stop()
        runner.stop()
