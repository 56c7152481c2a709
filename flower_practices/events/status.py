"""Health of the event stream, and the validation that guards the hot path.

:class:`StreamStatus` counts events, decode errors (by bounded kind), reconnects and the
connection state; both front ends (exporter and Flower plugin) expose it. Each malformed
or unknown event kind is logged once, so a flood of garbage cannot flood the logs.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("flower_practices.events")

TASK_EVENTS = frozenset((
    "task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
    "task-retried", "task-revoked", "task-rejected",
))
WORKER_EVENTS = frozenset(("worker-online", "worker-heartbeat", "worker-offline"))
KNOWN_EVENTS = TASK_EVENTS | WORKER_EVENTS

#: bounded set of decode-error kinds (metric label values)
DECODE_ERROR_KINDS = (
    "not_a_mapping", "missing_type", "unknown_type", "missing_uuid", "bad_field",
    "undecodable_body", "handler_error",
    # hostile input (events/sanitize.py, events/limits.py)
    "bad_text", "bad_uuid", "oversized_message", "unsupported_compression",
    "too_many_events",
)
_LOGGED_UNKNOWN_TYPES_CAP = 100


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
        self._logged: set[str] = set()

    def mark_connected(self) -> None:
        self.connected = True
        self.connected_since = time.time()
        self.disconnected_since = 0.0
        self.last_error = ""

    def mark_disconnected(self, reason: str) -> None:
        if self.connected or not self.disconnected_since:
            self.disconnected_since = time.time()
        self.connected = False
        self.last_error = reason

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
