"""Taps into Flower's event pipeline: no second broker connection.

* :func:`tap_state` wraps the ``event`` method of Flower's ``EventsState`` so each event
  Flower handles (on its IOLoop) is then fed to ``engine.observe`` - O(1) per event.
* :class:`StatusReceiver` replaces the ``EventReceiver`` Flower's ``Events`` thread uses,
  marking our :class:`StreamStatus` connected when consuming starts and disconnected (with
  a reconnect counted) when capture fails, and applying the exporter's message caps
  (:mod:`..events.limits`: size, bounded inflating, events per message; counted instead
  of tearing the connection down). Flower's own retry loop is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import flower.events
from celery.events import EventReceiver

from ..events.sanitize import clean_event, clean_text
from ..events.status import StreamStatus
from ..events.stream import cap_events, count_decode_error, guard_consumers

log = logging.getLogger("flower_practices.flower_plugin")

STATUS_ATTR = "flower_practices_status"


def tap_state(events: Any, observe: Callable[[Any], None],
              status: StreamStatus | None = None) -> None:
    """Feed every event Flower's state handles to ``observe``, after Flower's handling.

    With ``status``, the event's text fields are sanitised (:mod:`..events.sanitize`,
    counted there) *before* Flower's state sees them: Flower labels its own metrics with
    the raw task name, hostname and event type, and one lone surrogate would otherwise
    make Flower's ``/metrics`` fail for the rest of the process's life.
    """
    state = events.state
    original = getattr(state, "_flower_practices_original_event", None) or state.event

    def event(ev: Any) -> Any:
        if status is not None and type(ev) is dict:
            clean_event(ev, status)
            etype = ev.get("type")
            if type(etype) is str and not etype.isprintable():
                ev["type"] = clean_text(etype, 64)[0]
        try:
            return original(ev)
        finally:
            observe(ev)

    state._flower_practices_original_event = original
    state.event = event


class StatusReceiver(EventReceiver):
    """Flower's EventReceiver, reporting connection state to the plugin's StreamStatus."""

    def _status(self) -> StreamStatus | None:
        handler = (getattr(self, "handlers", None) or {}).get("*")
        owner = getattr(handler, "__self__", None)
        return getattr(owner, STATUS_ATTR, None)

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

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any,
                         wakeup: bool = True, **kwargs: Any) -> None:
        status = self._status()
        if status is not None:
            if status.connected_since:
                status.reconnects += 1
            status.mark_connected()
        super().on_consume_ready(connection, channel, consumers, wakeup=wakeup, **kwargs)

    def capture(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().capture(*args, **kwargs)
        except Exception as exc:
            status = self._status()
            if status is not None:
                status.mark_disconnected(f"event capture failed: {type(exc).__name__}")
            raise


def watch_connection(events: Any, status: StreamStatus) -> None:
    """Make Flower's Events thread report its broker connection to ``status``."""
    setattr(events, STATUS_ATTR, status)
    if flower.events.EventReceiver is not StatusReceiver:
        # Stock Flower apps in the same process are unaffected: no status attribute.
        flower.events.EventReceiver = StatusReceiver
