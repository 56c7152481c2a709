"""The reconnect loop both event consumers share: back-off, status and stop handling.

A subclass implements :meth:`ReconnectingStream._session` (connect, then consume until
the stream is stopped or the broker is lost, raising on loss) and calls
:meth:`ReconnectingStream._ready` once it is subscribed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celery import Celery

from .status import StreamStatus

log = logging.getLogger("flower_practices.events")


class ReconnectingStream(threading.Thread):
    """Run :meth:`_session` until :meth:`stop`; after a failure wait 1 s, doubling up to
    ``max_backoff``, and count each reconnection in ``status.reconnects``."""

    #: how the connection is named in the "connected" log line
    path = ""

    def __init__(self, app: Celery, handler: Callable[[dict], None], status: StreamStatus,
                 *, name: str, max_backoff: float = 30.0, wakeup: bool = True) -> None:
        super().__init__(name=name, daemon=True)
        self.app = app
        self.handler = handler
        self.status = status
        self.max_backoff = max_backoff
        self.wakeup = wakeup
        self._stop_event = threading.Event()
        self._ever_connected = False
        self._backoff = 1.0

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def _session(self) -> None:
        """Connect and consume; return once stopped, raise when the broker is lost."""
        raise NotImplementedError

    def _connected(self) -> None:
        """The broker answered: the next failure waits the shortest back-off again."""
        self._backoff = 1.0

    def _ready(self) -> None:
        """Subscribed: mark the stream connected (a reconnection after the first)."""
        if self._ever_connected:
            self.status.reconnects += 1
            log.warning("event stream reconnected to the broker")
        else:
            log.info("event stream connected to the broker%s", self.path)
        self._ever_connected = True
        self.status.mark_connected()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._session()
            except Exception as exc:  # broker gone, auth, DNS...: all retried
                reason = f"{type(exc).__name__}: {exc}"
                self.status.mark_disconnected(reason)
                if self._stop_event.is_set():
                    break
                log.warning("event stream lost the broker (%s); retrying in %.0fs",
                            reason, self._backoff)
                self._stop_event.wait(self._backoff)
                self._backoff = min(self._backoff * 2.0, self.max_backoff)
        self.status.mark_disconnected("stopped")
