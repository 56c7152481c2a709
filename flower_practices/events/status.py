"""Health of the event stream, and the validation that guards the hot path.

:class:`StreamStatus` counts events, decode errors (by bounded kind), reconnects and the
connection state; both front ends (exporter and Flower plugin) expose it. It also keeps
the blind windows: each loss of a connected stream is a *gap*, and the seconds spent
disconnected (from the start of consuming, the current gap included) are summed, so
``flower_practices_event_stream_disconnected_seconds_total`` says how long the exporter
could not see events. Each malformed or unknown event kind is logged once, so a flood of
garbage cannot flood the logs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

log = logging.getLogger("flower_practices.events")


#: bounded set of decode-error kinds (metric label values)
DECODE_ERROR_KINDS = (
    "not_a_mapping", "missing_type", "unknown_type", "missing_uuid", "bad_field",
    "undecodable_body", "handler_error",
    # hostile input (events/sanitize.py, events/limits.py)
    "bad_text", "bad_uuid", "oversized_message", "unsupported_compression",
    "too_many_events",
    # the final event a finished task already had, again (state.DUPLICATE_FINAL)
    "duplicate_final",
)
_LOGGED_UNKNOWN_TYPES_CAP = 100


#: the /healthz and /api/practices reason while the stream is connected
CONNECTED = "event stream connected"


def health_answer(ok: bool, reason: str, since: float | None) -> tuple[int, dict]:
    """``/healthz``'s (HTTP status, document): 200 while the stream is connected, else
    503; ``since`` is when it connected or disconnected (None: unknown). The main
    process and the /healthz process both answer through here."""
    return (200 if ok else 503), {"status": "ok" if ok else "unavailable",
                                  "reason": reason, "since": since or None}


def disconnected_reason(last_error: str, down_since: float | None,
                        last_attempt_at: float) -> str:
    """Why the stream is not connected, as of now: ``down_since`` is the monotonic start
    of the current gap (None: none), ``last_attempt_at`` the wall time of the last failed
    attempt (0: none). Also what the exporter's ``/healthz`` process answers
    (:mod:`flower_practices.exporter.health_board`)."""
    out = f"event stream not connected: {last_error or 'unknown'}"
    if down_since is not None:
        out += f" (disconnected for {time.monotonic() - down_since:.0f}s"
        if last_attempt_at:
            out += f", last attempt {max(0.0, time.time() - last_attempt_at):.0f}s ago"
        out += ")"
    return out


#: seconds a sender's clock may lag ours (Celery warns of clock drift past 16 s)
CLOCK_DRIFT_SECONDS = 16.0


class Hearing:
    """When the engine could hear the stream: the last blind window's start
    (``deaf_from``) and the time since which it has been connected without a break
    (``since``; ``inf`` while blind). Wall-clock Unix times, as events' arrival times.

    The one place where silence is judged against blindness: a worker, a queue or a
    schedule that was not heard from while the stream was down is *unknown*, not silent.
    Each return counts in ``returns``; the state then lets go of the tasks it held as
    reserved from before (``RuntimeState.settle``): they may have started unheard.
    An engine fed directly (never connected, never blind) hears everything: both 0.
    """

    __slots__ = ("deaf_from", "since", "unsure_before", "returns")

    def __init__(self) -> None:
        self.deaf_from = 0.0
        self.since = 0.0
        #: records last heard of (by the sender's clock) before this may be stale: their
        #: next event may have come while the stream was down (0: nothing is; the first
        #: connection leaves it at 0, nothing was heard before it)
        self.unsure_before = 0.0
        #: blind windows ended so far (the first connection is none): the state lets go
        #: of the reserved tasks it holds as of an earlier count (``RuntimeState.settle``)
        self.returns = 0

    @property
    def deaf(self) -> bool:
        """The stream is down now."""
        return self.since == math.inf

    def heard_from(self, last: float, threshold: float) -> float:
        """From when silence after ``last`` (the last time something was heard of) counts
        toward a ``threshold``-second judgement: ``last`` itself when it was heard after
        the last blind window, or when that silence had already reached ``threshold``
        when the window began (it was judged silent then); else the end of the window
        (``inf`` while blind: nothing is silent for long enough)."""
        if last >= self.deaf_from - threshold:
            since = self.since
            return last if last >= since else since
        return last

    def unsure(self, ts: float) -> bool:
        """Something last heard of at ``ts`` (its sender's timestamp) may have changed
        unheard since: a blind window came after it, or the stream is down now."""
        return ts < self.unsure_before or self.since == math.inf

    def reconnected(self, at: float) -> None:
        """Connected again at ``at`` after a blind window (not the first connection):
        what was last heard of before it is unsure. Senders' clocks may be behind ours
        by up to :data:`CLOCK_DRIFT_SECONDS`, so for a short window the line is its start,
        for a long one just before its end."""
        self.unsure_before = max(self.deaf_from, at - CLOCK_DRIFT_SECONDS)
        self.since = at
        self.returns += 1


class StreamStatus:
    """Counters and flags describing the event stream."""

    def __init__(self) -> None:
        self.events = 0
        self.decode_errors: dict[str, int] = dict.fromkeys(DECODE_ERROR_KINDS, 0)
        self.reconnects = 0
        #: label values cut to MAX_LABEL_LENGTH (events/sanitize.py)
        self.labels_truncated = 0
        self.connected = False
        self.last_event_at = 0.0
        self.last_error = "not connected yet"
        self.connected_since = 0.0
        #: when the stream was last seen to go down (creation time until the first connect)
        self.disconnected_since = time.time()
        #: connected streams lost (each one starts a blind window)
        self.gaps = 0
        #: time.time() of the last failed connection attempt (0: none yet)
        self.last_attempt_at = 0.0
        self._down_total = 0.0
        self._down_since: float | None = None  # monotonic start of the current gap
        # the pair (_down_total, _down_since) changes together: a scrape in between must
        # not see a counter that goes back
        self._gap_lock = threading.Lock()
        self._logged: set[str] = set()
        #: the blind window the rules judge silence against (see :class:`Hearing`)
        self.hearing = Hearing()
        #: called after each change of the connection state (the exporter publishes the
        #: status to its /healthz process then); from the thread that changed it
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def begin(self) -> None:
        """Consuming starts now: from here on, time not connected is counted as blind."""
        with self._gap_lock:
            if not self.connected and self._down_since is None:
                self._down_since = time.monotonic()
        if not self.connected:
            self._go_deaf(time.time())
        self._changed()

    def _go_deaf(self, at: float) -> None:
        hearing = self.hearing
        if hearing.since != math.inf:  # a new blind window (not another failed attempt)
            hearing.since = math.inf  # first: a reader never sees the old ``since`` with
            hearing.deaf_from = at    # the new ``deaf_from``

    def _end_gap(self) -> None:
        with self._gap_lock:
            if self._down_since is not None:
                self._down_total += time.monotonic() - self._down_since
                self._down_since = None

    def mark_connected(self) -> None:
        self._end_gap()
        self.connected = True
        first = not self.connected_since
        self.connected_since = time.time()
        self.disconnected_since = 0.0
        if self.hearing.deaf:  # the end of a blind window (the first: nothing before it)
            if first:
                self.hearing.since = self.connected_since
            else:
                self.hearing.reconnected(self.connected_since)
        self.last_error = ""
        self._changed()

    def mark_disconnected(self, reason: str, *, final: bool = False) -> None:
        """A connection attempt failed or the stream was lost (``final``: stopped for good,
        which ends the count of blind time instead of starting a gap)."""
        if self.connected or not self.disconnected_since:
            self.disconnected_since = time.time()
        self._go_deaf(self.disconnected_since)
        if final:
            self._end_gap()
        else:
            if self.connected:
                self.gaps += 1
            with self._gap_lock:
                if self._down_since is None:
                    self._down_since = time.monotonic()
            self.last_attempt_at = time.time()
        self.connected = False
        self.last_error = reason
        self._changed()

    def disconnected_seconds(self) -> float:
        """Seconds spent disconnected since consuming began, the ongoing gap included."""
        with self._gap_lock:
            since, total = self._down_since, self._down_total
            return total + (time.monotonic() - since if since is not None else 0.0)

    @property
    def down_since(self) -> float | None:
        """``time.monotonic()`` when the current blind window began (None: none)."""
        return self._down_since

    def gap_seconds(self) -> float:
        """Length of the current blind window so far (0 while connected)."""
        since = self._down_since
        return time.monotonic() - since if since is not None else 0.0

    def reason(self) -> str:
        """Why the stream is not connected, as of now (for ``/healthz`` and the UI)."""
        return disconnected_reason(self.last_error, self._down_since, self.last_attempt_at)

    def decode_error(self, kind: str, detail: str = "", kept: bool = False,
                     n: int = 1) -> None:
        """Count ``n`` dropped events (``kept``: a bad field ignored, the event still
        used); log the first of each kind (and each unknown type once)."""
        self.decode_errors[kind] = self.decode_errors.get(kind, 0) + n
        key = f"{kind}:{detail}" if kind == "unknown_type" else kind
        if key not in self._logged and len(self._logged) < _LOGGED_UNKNOWN_TYPES_CAP:
            self._logged.add(key)
            what = ("bad field in an event (the field is ignored or cleaned, the event kept)"
                    if kept else "dropping event")
            log.warning(
                "%s: %s%s (counted in "
                "flower_practices_event_decode_errors_total{kind=%r}; logged once per kind)",
                what, kind, f" {detail!r}" if detail else "", kind,
            )
