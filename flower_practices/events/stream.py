"""The broker consumer thread: Celery events in, ``Engine.observe`` out.

Uses Celery's :class:`~celery.events.receiver.EventReceiver` with a guarded message
callback (a malformed message is counted, never fatal), and reconnects with exponential
back-off (capped) whenever the broker goes away, counting each reconnect.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.events.receiver import EventReceiver

from .status import StreamStatus

log = logging.getLogger("flower_practices.events")


class GuardedReceiver(EventReceiver):
    """An EventReceiver whose per-message path cannot raise into the consumer loop."""

    def __init__(self, *args: Any, status: StreamStatus, on_ready: Callable[[], None],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._status = status
        self._on_ready = on_ready

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any,
                         wakeup: bool = True, **kwargs: Any) -> None:
        self._on_ready()
        if wakeup:
            try:
                self.wakeup_workers(channel=channel)
            except Exception as exc:  # waking workers is a nicety, not a requirement
                log.info("could not ask workers for a heartbeat: %s", exc)

    def _receive(self, body: Any, message: Any, list: Any = list,
                 isinstance: Any = isinstance) -> None:
        if isinstance(body, list):
            for event in body:
                self._one(event)
        else:
            self._one(body)

    def _one(self, body: Any) -> None:
        if not isinstance(body, dict):
            self._status.events += 1
            self._status.decode_error("not_a_mapping")
            return
        try:
            etype, event = self.event_from_message(body)
        except Exception:
            # missing 'type', non-numeric clock/timestamp/utcoffset...: let the engine
            # validate and count it, with the fields Celery would have added.
            event = body
            etype = body.get("type")
            body.setdefault("local_received", time.time())
        try:
            self.process(etype, event)
        except Exception:
            self._status.decode_error("handler_error")
            log.debug("event handler raised", exc_info=True)

    def process(self, type: Any, event: Any) -> None:  # noqa: A002 - Celery's signature
        self.handlers["*"](event)


class EventStream(threading.Thread):
    """Consume events from ``app``'s broker until :meth:`stop`; reconnect on failure."""

    def __init__(
        self,
        app: Celery,
        handler: Callable[[dict], None],
        status: StreamStatus,
        *,
        max_backoff: float = 30.0,
        wakeup: bool = True,
    ) -> None:
        super().__init__(name="flower-practices-events", daemon=True)
        self.app = app
        self.handler = handler
        self.status = status
        self.max_backoff = max_backoff
        self.wakeup = wakeup
        self._stop_event = threading.Event()
        self._receiver: GuardedReceiver | None = None
        self._ever_connected = False

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        if self.is_alive():
            self.join(timeout)

    def _ready(self) -> None:
        if self._ever_connected:
            self.status.reconnects += 1
            log.warning("event stream reconnected to the broker")
        else:
            log.info("event stream connected to the broker")
        self._ever_connected = True
        self.status.mark_connected()

    def run(self) -> None:
        backoff = 1.0
        while not self._stop_event.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    conn.ensure_connection(max_retries=1)
                    receiver = GuardedReceiver(
                        conn, handlers={"*": self.handler}, app=self.app,
                        status=self.status, on_ready=self._ready,
                    )
                    self._receiver = receiver
                    if self._stop_event.is_set():
                        return
                    backoff = 1.0
                    receiver.capture(limit=None, timeout=None, wakeup=self.wakeup)
                    if self._stop_event.is_set():
                        return
            except Exception as exc:  # broker gone, auth, DNS...: all retried
                reason = f"{type(exc).__name__}: {exc}"
                self.status.mark_disconnected(reason)
                if self._stop_event.is_set():
                    return
                log.warning("event stream lost the broker (%s); retrying in %.0fs",
                            reason, backoff)
                self._stop_event.wait(backoff)
                backoff = min(backoff * 2.0, self.max_backoff)
            finally:
                self._receiver = None
        self.status.mark_disconnected("stopped")
