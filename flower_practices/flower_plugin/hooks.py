"""Taps into Flower's event pipeline: no second broker connection.

* :func:`tap_state` wraps the ``event`` method of Flower's ``EventsState`` so each event
  Flower handles (on its IOLoop) is then fed to ``engine.observe`` - O(1) per event.
* :class:`StatusReceiver` replaces the ``EventReceiver`` Flower's ``Events`` thread uses,
  marking our :class:`StreamStatus` connected when consuming starts and disconnected (with
  a reconnect counted) when capture fails. Its connection asks for AMQP heartbeats (as
  the exporter's does), so a frozen broker is reported instead of looking connected.
  Flower's own retry loop is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import flower.events
from celery.events import EventReceiver

from ..events.status import StreamStatus
from ..events.stream import report_missed_heartbeat, with_liveness

log = logging.getLogger("flower_practices.flower_plugin")

STATUS_ATTR = "flower_practices_status"


def tap_state(events: Any, observe: Callable[[Any], None]) -> None:
    """Feed every event Flower's state handles to ``observe``, after Flower's handling."""
    state = events.state
    original = getattr(state, "_flower_practices_original_event", None) or state.event

    def event(ev: Any) -> Any:
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

    def create_connection(self) -> Any:
        conn = super().create_connection()
        return with_liveness(conn) if self._status() is not None else conn

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any,
                         wakeup: bool = True, **kwargs: Any) -> None:
        status = self._status()
        if status is not None:
            report_missed_heartbeat(connection, status)
        # Flower's wakeup broadcast first: if the broker freezes during it, the call fails
        # (bounded reads) and the stream was never reported connected
        super().on_consume_ready(connection, channel, consumers, wakeup=wakeup, **kwargs)
        if status is not None:
            if status.connected_since:
                status.reconnects += 1
            status.mark_connected()

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
