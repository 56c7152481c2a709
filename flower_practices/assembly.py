"""Assembly: build an :class:`Engine` for a Celery app, and run its background threads.

Used by the standalone exporter and the demo; the Flower plugin builds its engine with
:func:`build_engine` too but drives it from Flower's IOLoop instead of these threads.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from .appinfo import AppInfo, snapshot_app
from .apploader import BROKER_SOURCE_ATTR
from .brokers import NO_EVENTS_ON_DATABASE, is_database_broker, redact
from .config import Settings
from .engine import Engine
from .events.status import StreamStatus
from .events.stream import make_event_stream
from .probes.poller import ProbePoller
from .probes.results import ResultStore, result_key_prefix
from .store import open_store

log = logging.getLogger("flower_practices")


def build_engine(app: Celery, settings: Settings, *, app_loaded: bool,
                 stream_status: StreamStatus | None = None,
                 state_dir: str | None = None) -> Engine:
    """An engine configured from ``app``'s broker, result backend and (if loaded) tasks.

    With ``state_dir`` (see :mod:`flower_practices.store`), findings are restored from the
    broker's state file there and saved after each evaluation; None: kept in memory only.
    """
    broker_url = str(app.conf.broker_url or "")
    backend = str(app.conf.result_backend) if app.conf.result_backend else None
    info: AppInfo | None = None
    if app_loaded:
        try:
            info = snapshot_app(app)
        except Exception as exc:
            log.warning("could not read task definitions from the app (%s: %s); "
                        "rules will work from events alone", type(exc).__name__, exc)
    results = None
    unusable = ""
    if backend:
        try:
            results = ResultStore.from_url(
                backend, result_key_prefix(app.conf),
                app.conf.get("result_backend_transport_options"))
        except Exception as exc:  # bad URL: report, keep going without it
            # our own messages name no credentials; anything else only by its class
            unusable = str(exc)[:200] if isinstance(exc, ValueError) \
                else type(exc).__name__
            log.warning("cannot use result backend %s: %s", redact(backend), unusable)
    return Engine(
        settings,
        broker_url=broker_url,
        broker_source=getattr(app, BROKER_SOURCE_ATTR, "app configuration (broker_url)"),
        result_backend=backend,
        app=info,
        results=results,
        results_unusable=unusable,
        events_supported=not is_database_broker(broker_url),
        stream_status=stream_status,
        store=open_store(state_dir, broker_url),
    )


class EngineRunner:
    """Event stream + probe poller + periodic evaluation, as daemon threads."""

    def __init__(self, app: Celery, engine: Engine) -> None:
        self.app = app
        self.engine = engine
        self.stream: threading.Thread | None = None
        if engine.ctx.events_supported:
            self.stream = make_event_stream(app, engine.observe, engine.stream_status,
                                            consumer=engine.settings.event_consumer,
                                            batch_handler=engine.observe_many)
        else:
            engine.stream_status.mark_disconnected(NO_EVENTS_ON_DATABASE, final=True)
        self.poller = ProbePoller(app, engine) if engine.ctx.events_supported else None
        self._stop_event = threading.Event()
        self._evaluator = threading.Thread(target=self._evaluate_loop,
                                           name="flower-practices-evaluate", daemon=True)

    def start(self) -> None:
        log.info("monitoring broker %s", redact(self.engine.ctx.broker_url))
        if self.settings_enable_events():
            try:
                self.app.control.enable_events()
            except Exception as exc:
                log.warning("could not ask workers to enable events: %s", exc)
        if self.stream is not None:
            self.stream.start()
        if self.poller is not None:
            self.poller.start()
        self.engine.evaluate()
        self._evaluator.start()

    def settings_enable_events(self) -> bool:
        return self.engine.settings.enable_events and self.stream is not None

    def _evaluate_loop(self) -> None:
        while not self._stop_event.wait(self.engine.settings.evaluation_interval):
            self.engine.evaluate()

    def stop(self) -> None:
        self._stop_event.set()
        if self.stream is not None:
            self.stream.stop()
        if self.poller is not None:
            self.poller.stop()
        if self._evaluator.is_alive():
            self._evaluator.join(5)
