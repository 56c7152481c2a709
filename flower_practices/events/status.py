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
        self._changed()

    def _end_gap(self) -> None:
        with self._gap_lock:
            if self._down_since is not None:
                self._down_total += time.monotonic() - self._down_since
                self._down_since = None

    def mark_connected(self) -> None:
        self._end_gap()
        self.connected = True
        self.connected_since = time.time()
        self.disconnected_since = 0.0
        self.last_error = ""
        self._changed()

    def mark_disconnected(self, reason: str, *, final: bool = False) -> None:
        """A connection attempt failed or the stream was lost (``final``: stopped for good,
        which ends the count of blind time instead of starting a gap)."""
        if self.connected or not self.disconnected_since:
            self.disconnected_since = time.time()
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
