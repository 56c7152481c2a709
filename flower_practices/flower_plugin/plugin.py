"""The ``flower_practices`` Flower plugin: engine, event tap, timers, pages and metrics.

``install(flower_app)`` builds the engine with :func:`flower_practices.runtime.build_engine`,
feeds it every event Flower's own state handles (on the IOLoop, O(1)), and on ``start()``
runs rule evaluation and broker probes from tornado ``PeriodicCallback``s whose work goes
to Flower's executor (both may do network I/O, which must never block the IOLoop).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

from prometheus_client import REGISTRY
from tornado.ioloop import PeriodicCallback

from ..brokers import broker_url_problem, is_database_broker, redact
from ..config import ConfigError, Settings, load_settings
from ..engine import Engine
from ..events.status import StreamStatus
from ..metrics import PracticesCollector
from ..probes.poller import ProbePoller
from ..runtime import build_engine
from .handlers import handlers
from .hooks import tap_state, watch_connection
from .templates import APP_ATTR, install_loader

log = logging.getLogger("flower_practices.flower_plugin")

_collector_lock = threading.Lock()
_collector: PracticesCollector | None = None


def register_metrics(engine: Engine) -> PracticesCollector:
    """Expose ``engine`` in Flower's ``/metrics`` (prometheus_client's default REGISTRY).

    Registered once per process; installing the plugin again re-points the collector at the
    new engine instead of registering a duplicate.
    """
    global _collector
    with _collector_lock:
        if _collector is None:
            collector = PracticesCollector(engine)
            REGISTRY.register(collector)
            _collector = collector
        else:
            _collector.engine = engine
        return _collector


def load_plugin_settings(options: Any) -> Settings:
    path = getattr(options, "practices_config", None)
    return load_settings(path) if path else Settings()


def app_has_user_tasks(capp: Any) -> bool:
    """Whether ``-A proj`` loaded user code (tasks other than Celery's built-ins)."""
    try:
        return any(not name.startswith("celery.") for name in capp.tasks)
    except Exception:
        return False


def _prefixed(rules: list[Any], url_prefix: str | None) -> list[Any]:
    if not url_prefix:
        return rules
    from flower.app import rewrite_handler

    return [rewrite_handler(rule, url_prefix) for rule in rules]


class PracticesPlugin:
    """The plugin attached to one Flower application (``flower_app.flower_practices``)."""

    def __init__(self, flower_app: Any, settings: Settings, *,
                 app_loaded: bool | None = None) -> None:
        self.flower_app = flower_app
        self.settings = settings
        capp = flower_app.capp
        if app_loaded is None:
            app_loaded = app_has_user_tasks(capp)
        self.status = StreamStatus()
        self.engine = build_engine(capp, settings, app_loaded=app_loaded,
                                   stream_status=self.status)
        broker_url = str(capp.conf.broker_url or "")
        self.events_supported = not is_database_broker(broker_url)
        self.poller = ProbePoller(capp, self.engine) if self.events_supported else None
        self._timers: list[PeriodicCallback] = []
        self._busy: set[str] = set()
        self.started = False

    # -- wiring ------------------------------------------------------------------------
    def attach(self) -> None:
        app = self.flower_app
        setattr(app, APP_ATTR, self)
        install_loader(app.settings)
        app.add_handlers(r".*$", _prefixed(handlers(), app.options.url_prefix))
        tap_state(app.events, self.engine.observe)
        watch_connection(app.events, self.status)
        if not self.events_supported:
            self.status.mark_disconnected(
                "the broker is a database: Celery events cannot flow over it", final=True)
        register_metrics(self.engine)

    # -- timers ------------------------------------------------------------------------
    def start(self) -> None:
        """Start evaluation and probe timers on Flower's IOLoop (idempotent)."""
        if self.started:
            return
        self.started = True
        if self.events_supported:
            self.status.begin()  # blind time counts from here (Flower's Events thread)
        stop_on_sighup()
        log.info("flower_practices: monitoring broker %s; %d rules active, evaluation every "
                 "%gs, probes every %gs", redact(self.engine.ctx.broker_url),
                 len(self.engine.rules), self.settings.evaluation_interval,
                 self.settings.probe_interval)
        self._every(self.settings.evaluation_interval, "evaluate", self.engine.evaluate)
        if self.poller is not None:
            self._every(self.settings.probe_interval, "probe", self.poller.run_once)
        for timer in self._timers:
            timer.start()
        self.flower_app.io_loop.add_callback(self._run, "evaluate", self.engine.evaluate)
        if self.poller is not None:
            self.flower_app.io_loop.add_callback(self._run, "probe", self.poller.run_once)

    def stop(self) -> None:
        for timer in self._timers:
            timer.stop()
        self._timers.clear()
        self.started = False

    def _every(self, seconds: float, name: str, fn: Any) -> None:
        self._timers.append(PeriodicCallback(lambda: self._run(name, fn),
                                             max(seconds, 0.05) * 1000.0))

    async def _run(self, name: str, fn: Any) -> None:
        """Run ``fn`` in Flower's executor, never two of the same kind at once."""
        if name in self._busy:
            return
        self._busy.add(name)
        try:
            await self.flower_app.io_loop.run_in_executor(None, fn)
        except Exception:
            log.exception("flower_practices: %s failed", name)
        finally:
            self._busy.discard(name)


def stop_on_sighup() -> None:
    """SIGHUP stops Flower cleanly, like SIGTERM and like the exporter (no config reload;
    a changed --practices_config is applied by a restart). Only from the main thread, and
    only where SIGHUP still has its default action (terminate without clean-up)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL:
        return

    def handle(signum: int, frame: Any) -> None:
        log.warning("received SIGHUP: stopping")
        sys.exit(0)  # Flower's command catches SystemExit; its atexit hook stops the app

    signal.signal(signal.SIGHUP, handle)


def install(flower_app: Any, settings: Settings | None = None) -> PracticesPlugin:
    """Install the plugin into a constructed (not yet started) Flower application."""
    if settings is None:
        settings = load_plugin_settings(flower_app.options)
    conf = flower_app.capp.conf
    problem = broker_url_problem(str(conf.broker_read_url or conf.broker_url or ""))
    if problem:  # a URL that can never work: say so at start, not retry forever
        raise ConfigError(problem)
    plugin = PracticesPlugin(flower_app, settings)
    plugin.attach()
    return plugin
