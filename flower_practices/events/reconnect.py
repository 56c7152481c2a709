"""The reconnect loop both event consumers share: back-off, status and stop handling.

A subclass implements :meth:`ReconnectingStream._session` (connect, then consume until
the stream is stopped or the broker is lost, raising on loss) and calls
:meth:`ReconnectingStream._ready` once it is subscribed.

Back-off: 0.5 s after the first failure, doubling up to :data:`MAX_BACKOFF` (5 s), each
wait drawn uniformly from the upper half of the current step ("equal jitter"), so a
broker that comes back is retried within 5 s and many exporters do not retry in lockstep.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from celery import Celery

from .status import StreamStatus

log = logging.getLogger("flower_practices.events")

#: first back-off step and its cap, in seconds
MIN_BACKOFF = 0.5
MAX_BACKOFF = 5.0


def jittered(step: float) -> float:
    """The wait for a back-off ``step``: uniform in [step/2, step]."""
    return step / 2 + random.uniform(0.0, step / 2)


class ReconnectingStream(threading.Thread):
    """Run :meth:`_session` until :meth:`stop`; after a failure wait 0.5 s, doubling up to
    ``max_backoff`` (jittered), and count each reconnection in ``status.reconnects``."""

    #: how the connection is named in the "connected" log line
    path = ""

    def __init__(self, app: Celery, handler: Callable[[dict], None], status: StreamStatus,
                 *, name: str, max_backoff: float = MAX_BACKOFF, wakeup: bool = True) -> None:
        super().__init__(name=name, daemon=True)
        self.app = app
        self.handler = handler
        self.status = status
        self.max_backoff = max_backoff
        self.wakeup = wakeup
        self._stop_event = threading.Event()
        self._ever_connected = False
        self._backoff = MIN_BACKOFF

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def _session(self) -> None:
        """Connect and consume; return once stopped, raise when the broker is lost."""
        raise NotImplementedError

    def _connected(self) -> None:
        """The broker answered: the next failure waits the shortest back-off again."""
        self._backoff = MIN_BACKOFF

    def _ready(self) -> None:
        """Subscribed: mark the stream connected (a reconnection after the first)."""
        if self._ever_connected:
            self.status.reconnects += 1
            log.warning("event stream reconnected to the broker after %.1fs without events",
                        self.status.gap_seconds())
        else:
            log.info("event stream connected to the broker%s", self.path)
        self._ever_connected = True
        self.status.mark_connected()

    def _wake_workers_async(self) -> None:
        """Ask workers for a heartbeat (if ``wakeup``), on a thread of its own: a publish
        has no timeout, and a broker freezing right now must not stall the consumer, which
        would then never see the silence and never report the broker lost. For the
        consumers that publish themselves (the kombu receiver wakes workers on its own)."""
        if self.wakeup:
            threading.Thread(target=self._wake_workers, daemon=True,
                             name="flower-practices-wakeup").start()

    def _wake_workers(self) -> None:
        try:
            self.app.control.broadcast("heartbeat")
        except Exception as exc:  # waking workers is a nicety, not a requirement
            log.info("could not ask workers for a heartbeat: %s", exc)

    def run(self) -> None:
        self.status.begin()
        while not self._stop_event.is_set():
            try:
                self._session()
            except Exception as exc:  # broker gone, auth, DNS...: all retried
                reason = f"{type(exc).__name__}: {exc}"[:300]
                first = self.status.connected or self._backoff == MIN_BACKOFF
                self.status.mark_disconnected(reason)
                if self._stop_event.is_set():
                    break
                wait = jittered(min(self._backoff, self.max_backoff))
                # warn once per outage; each further failed attempt is info
                (log.warning if first else log.info)(
                    "event stream lost the broker (%s); retrying in %.1fs", reason, wait)
                self._stop_event.wait(wait)
                self._backoff = min(self._backoff * 2.0, self.max_backoff)
        self.status.mark_disconnected("stopped", final=True)
