"""The ``flower_practices`` Flower plugin: engine, event tap, timers, pages and metrics.

``install(flower_app)`` builds the engine with :func:`flower_practices.assembly.build_engine`,
feeds it every event Flower's own state handles (on the IOLoop, O(1)), and on ``start()``
runs rule evaluation and broker probes from tornado ``PeriodicCallback``s whose work goes
to Flower's executor (both may do network I/O, which must never block the IOLoop).

Taps into Flower's event pipeline, with no second broker connection:

* :func:`tap_state` wraps the ``event`` method of Flower's ``EventsState`` so each event
  Flower handles (on its IOLoop) is then fed to ``engine.observe`` - O(1) per event, in
  batches of what arrived during one IOLoop iteration.
* :class:`StatusReceiver` replaces the ``EventReceiver`` Flower's ``Events`` thread uses,
  marking our :class:`StreamStatus` connected when consuming starts and disconnected (with
  a reconnect counted) when capture fails. Its connection asks for AMQP heartbeats (as
  the exporter's does), so a frozen broker is reported instead of looking connected. It
  applies the exporter's message caps
  (:mod:`..events.limits`: size, bounded inflating, events per message; counted instead
  of tearing the connection down). Flower's own retry loop is unchanged.

The pages live in :mod:`.web`; the options (``--practices_config``) in :mod:`.host`.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import flower.events
from celery.events import EventReceiver
from prometheus_client import REGISTRY
from tornado.ioloop import PeriodicCallback

from ..api import practices_document
from ..assembly import build_engine
from ..brokers import NO_EVENTS_ON_DATABASE, broker_url_problem, redact
from ..config import ConfigError, Settings, load_settings
from ..engine import Engine
from ..events.sanitize import clean_event, clean_text, json_bytes
from ..events.status import StreamStatus
from ..events.stream import (
    cap_events,
    count_decode_error,
    direct_event_stream,
    guard_consumers,
    report_missed_heartbeat,
    with_liveness,
)
from ..metrics import PracticesCollector
from ..probes.poller import ProbePoller
from ..store import default_state_dir
from .metrics_auth import metrics_handlers
from .web import APP_ATTR, handlers, install_loader

log = logging.getLogger("flower_practices.flower_plugin")

STATUS_ATTR = "flower_practices_status"
CONSUMER_ATTR = "flower_practices_consumer"
#: how long an event Flower handled waits for the engine, and the most that wait
#: (at 2,000 events/s a batch is 200 events: the engine's working set is then warm in the CPU
#: caches for most of them -- its per-event cost inside Flower is 7.5 µs in batches of 40,
#: 6.9 µs in batches of 200, 5.7 µs in batches of 1000, bench/README.md)
BATCH_SECONDS = 0.1
BATCH_EVENTS = 2000
#: most events handed to Flower's state in one IOLoop callback by the direct consumer
#: (Flower's state takes ~100-300 µs per event: a few tens of ms per callback)
FLOWER_CHUNK = 200


def tap_state(events: Any, observe: Callable[[Any], None],
              status: StreamStatus | None = None,
              observe_many: Callable[..., None] | None = None) -> None:
    """Feed every event Flower's state handles to ``observe``, after Flower's handling.

    With ``status``, the event's text fields are sanitised (:mod:`..events.sanitize`,
    counted there) *before* Flower's state sees them: Flower labels its own metrics with
    the raw task name, hostname and event type, and one lone surrogate would otherwise
    make Flower's ``/metrics`` fail for the rest of the process's life.

    The events reach ``observe`` in batches, in order, on the IOLoop: each handled event
    is appended to a list, and a timer set when the list was empty feeds the list to
    ``observe`` :data:`BATCH_SECONDS` later (at once when it holds :data:`BATCH_EVENTS`).
    The engine's and Flower's working sets then no longer take turns in the CPU caches
    at every event, which cost about as much as ``Engine.observe`` itself
    (bench/README.md). The engine sees each event at most that much later; its findings
    are evaluated every few seconds. Without an IOLoop on ``events`` (tests), each event
    is fed at once.
    """
    state = events.state
    original = getattr(state, "_flower_practices_original_event", None) or state.event
    io_loop = getattr(events, "io_loop", None)
    pending: list[Any] = []

    def flush() -> None:
        batch = pending[:]
        pending.clear()
        if observe_many is not None:
            # never raises (Engine.observe_many): one lock hold; with ``status`` the
            # text fields were cleaned below, before Flower's state saw them
            observe_many(batch, cleaned=status is not None)
            return
        for ev in batch:
            observe(ev)  # never raises (Engine.observe)

    def event(ev: Any) -> Any:
        if status is not None and isinstance(ev, dict):
            clean_event(ev, status)  # a few length and isprintable checks when clean
            etype = ev.get("type")
            if type(etype) is str and not etype.isprintable():
                ev["type"] = clean_text(etype, 64)[0]
        try:
            return original(ev)
        finally:
            if io_loop is None:
                observe(ev)
            else:
                if not pending:
                    io_loop.call_later(BATCH_SECONDS, flush)
                pending.append(ev)
                if len(pending) >= BATCH_EVENTS:
                    flush()  # the timer then finds the list empty

    state._flower_practices_original_event = original
    state._flower_practices_flush = flush
    state.event = event


def flush_tap(events: Any) -> None:
    """Feed the engine, now, the events :func:`tap_state` holds for its next batch."""
    flush = getattr(events.state, "_flower_practices_flush", None)
    if flush is not None:
        flush()


class StatusReceiver(EventReceiver):
    """Flower's EventReceiver, reporting connection state to the plugin's StreamStatus."""

    def _status(self) -> StreamStatus | None:
        status = self.__dict__.get("_fp_status")  # found once, then per message for free
        if status is None:
            handler = (getattr(self, "handlers", None) or {}).get("*")
            owner = getattr(handler, "__self__", None)
            status = getattr(owner, STATUS_ATTR, None)
            if status is not None:
                self._fp_status = status
        return status

    def get_consumers(self, Consumer: Any, channel: Any) -> list:  # noqa: N803 - Celery's
        consumers = super().get_consumers(Consumer, channel)
        status = self._status()
        if status is not None:
            guard_consumers(channel, consumers,
                            lambda message, exc: count_decode_error(status, exc))
        return consumers

    def _receive(self, body: Any, message: Any, list: Any = list,
                 isinstance: Any = isinstance) -> None:
        status = self._status()
        if status is not None and isinstance(body, list):
            body = cap_events(status, body)
        super()._receive(body, message, list, isinstance)

    def create_connection(self) -> Any:
        conn = super().create_connection()
        return with_liveness(conn) if self._status() is not None else conn

    def on_iteration(self) -> None:
        # ConsumerMixin checks heartbeats only when a drain times out; on a busy stream
        # that is never, and RabbitMQ drops a silent consumer after two missed heartbeats
        # (its exclusive queue, and the events in it, deleted with it). Check at most once
        # a second while events flow, as the exporter's receiver does.
        connection = getattr(self, "_fp_consuming", None)
        if connection is None:
            return
        now = time.monotonic()
        if now >= getattr(self, "_fp_next_heartbeat_check", 0.0):
            self._fp_next_heartbeat_check = now + 1.0
            connection.heartbeat_check()

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any,
                         wakeup: bool = True, **kwargs: Any) -> None:
        status = self._status()
        if status is not None:
            report_missed_heartbeat(connection, status)
            self._fp_consuming = connection
        # Flower's wakeup broadcast first: if the broker freezes during it, the call fails
        # (bounded reads) and the stream was never reported connected
        super().on_consume_ready(connection, channel, consumers, wakeup=wakeup, **kwargs)
        if status is not None:
            if status.connected_since:
                status.reconnects += 1
            status.mark_connected()

    def capture(self, limit: Any = None, timeout: Any = None, wakeup: bool = True) -> Any:
        if limit is None and timeout is None:  # Flower's Events thread: consume for ever
            stream = self._direct_stream(wakeup)
            if stream is not None:
                stream.run()  # reconnects itself; returns once stopped
                return None
        try:
            return super().capture(limit=limit, timeout=timeout, wakeup=wakeup)
        except Exception as exc:
            status = self._status()
            if status is not None:
                status.mark_disconnected(f"event capture failed: {type(exc).__name__}")
            raise


    def _direct_stream(self, wakeup: bool) -> Any:
        """The direct consumer (:func:`~..events.stream.direct_event_stream`) that feeds
        Flower's Events thread instead of kombu's generic one, when the plugin watches
        this thread, ``event_consumer`` is "auto" and the broker allows one; else None.

        Flower gets the same events (the consumers take each through the steps of
        ``EventReceiver.event_from_message``: clock, timestamp, ``local_received``), with
        the same caps as the exporter's, handed to its IOLoop one message at a time
        (:func:`flower_batches`). The stream reconnects by itself, with the exporter's
        back-off, and keeps the plugin's status (connected, reason, blind time)."""
        status = self._status()
        handler = (getattr(self, "handlers", None) or {}).get("*")
        owner = getattr(handler, "__self__", None)
        if status is None or getattr(owner, CONSUMER_ATTR, "kombu") != "auto" \
                or getattr(owner, "io_loop", None) is None:
            return None
        stream, path = direct_event_stream(self.app, handler, status,
                                           flower_batches(owner, status), wakeup=wakeup)
        if stream is None:
            log.info("flower_practices: Flower reads events with Celery's receiver (%s)", path)
        else:
            log.info("flower_practices: Flower reads events with the %s", path)
        return stream


def flower_batches(events: Any, status: StreamStatus) -> Callable[[list | tuple], None]:
    """Hand the events of one read to Flower's state on its IOLoop, in order, with one
    callback per :data:`FLOWER_CHUNK` events (Flower's own receiver schedules one per
    event). An event
    Flower's state cannot take (no ``hostname``, say) does not stop the rest of the
    message; the engine still judges it (the tap feeds it on), and the first such
    rejection is logged. Non-mappings are counted (``not_a_mapping``) and dropped here."""
    io_loop = events.io_loop
    logged: list[bool] = []

    def handle_all(bodies: list | tuple) -> None:
        handle = events.state.event  # looked up here: the plugin's tap wraps it
        for body in bodies:
            try:
                handle(body)
            except Exception as exc:
                if not logged:
                    logged.append(True)
                    log.warning("Flower's state rejected an event (%s); further rejections "
                                "are logged at debug level", type(exc).__name__)
                log.debug("Flower's state rejected an event", exc_info=True)

    def batch(bodies: list | tuple) -> None:
        good = [b for b in bodies if type(b) is dict]
        if len(good) != len(bodies):
            n = len(bodies) - len(good)
            status.events += n
            status.decode_error("not_a_mapping", n=n)
        # a read can bring thousands of events: in callbacks of at most FLOWER_CHUNK, so
        # that Flower's IOLoop serves its pages in between
        for i in range(0, len(good), FLOWER_CHUNK):
            io_loop.add_callback(handle_all, good[i:i + FLOWER_CHUNK])

    return batch


def watch_connection(events: Any, status: StreamStatus, consumer: str = "auto") -> None:
    """Make Flower's Events thread report its broker connection to ``status`` and, with
    ``consumer="auto"``, read events with the direct consumer where the broker allows."""
    setattr(events, STATUS_ATTR, status)
    setattr(events, CONSUMER_ATTR, consumer)
    if flower.events.EventReceiver is not StatusReceiver:
        # Stock Flower apps in the same process are unaffected: no status attribute.
        flower.events.EventReceiver = StatusReceiver

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
            # Flower renders with generate_latest: one bad family would fail the page
            collector = PracticesCollector(engine, validate=True)
            REGISTRY.register(collector)
            _collector = collector
        else:
            _collector.engine = engine
        return _collector


def load_plugin_settings(options: Any) -> Settings:
    path = getattr(options, "practices_config", None)
    return load_settings(path) if path else Settings()


def plugin_state_dir(options: Any) -> str:
    """``--practices_state_dir`` (FLOWER_PRACTICES_STATE_DIR), else the default directory."""
    value = getattr(options, "practices_state_dir", None)
    return default_state_dir() if value is None else str(value)


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
                 app_loaded: bool | None = None, state_dir: str | None = None) -> None:
        self.flower_app = flower_app
        self.settings = settings
        capp = flower_app.capp
        if app_loaded is None:
            app_loaded = app_has_user_tasks(capp)
        self.status = StreamStatus()
        self.engine = build_engine(capp, settings, app_loaded=app_loaded,
                                   stream_status=self.status, state_dir=state_dir)
        self.events_supported = self.engine.ctx.events_supported
        self.poller = ProbePoller(capp, self.engine) if self.events_supported else None
        self._timers: list[PeriodicCallback] = []
        self._busy: set[str] = set()
        self.started = False
        #: (monotonic time built, body) of the last ``/api/practices`` document
        self._api_body: tuple[float, bytes] | None = None
        #: ``/api/practices`` documents built (the rest were served from the cache)
        self.api_builds = 0
        self.clock: Callable[[], float] = time.monotonic

    def api_body(self) -> bytes:
        """The ``/api/practices`` body: built at most once per ``metrics_cache_seconds``
        (as the exporter's), so that many open pages or a client polling in a loop cost
        Flower's IOLoop one build per interval, not one per request."""
        now = self.clock()
        cached = self._api_body
        if cached is not None and now - cached[0] < self.settings.metrics_cache_seconds:
            return cached[1]
        body = json_bytes(practices_document(self.engine))
        self.api_builds += 1
        self._api_body = (now, body)
        return body

    # -- wiring ------------------------------------------------------------------------
    def attach(self) -> None:
        app = self.flower_app
        setattr(app, APP_ATTR, self)
        install_loader(app.settings)
        app.add_handlers(r".*$", _prefixed(handlers(), app.options.url_prefix))
        protected = metrics_handlers(app.options)  # [] unless --practices_metrics_auth
        if protected:
            app.add_handlers(r".*$", _prefixed(protected, app.options.url_prefix))
        tap_state(app.events, self.engine.observe, self.status, self.engine.observe_many)
        watch_connection(app.events, self.status, self.settings.event_consumer)
        if not self.events_supported:
            self.status.mark_disconnected(NO_EVENTS_ON_DATABASE, final=True)
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
    plugin = PracticesPlugin(flower_app, settings,
                             state_dir=plugin_state_dir(flower_app.options))
    plugin.attach()
    return plugin
