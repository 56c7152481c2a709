"""Validating one raw event before it reaches the state: the engine's first step.

:func:`validate` rejects what cannot be an event (not a mapping, no or an unknown type, a
task event without a usable uuid), counting each in the stream status, and repairs what
can be kept: label values and keys are sanitised (:mod:`~flower_practices.events.sanitize`)
and the timestamps made finite Unix times. O(1) per event, no allocation beyond what
sanitising needs.
"""

from __future__ import annotations

import time
from collections.abc import Container
from typing import Any

from .sanitize import MAX_UUID_LENGTH, TASK_FIELDS, WORKER_FIELDS, clean_event
from .status import StreamStatus
from .types import TASK_EVENTS

#: Unix times from here on are not believed (year 5138)
_MAX_TIME = 1e11


def validate(event: Any, status: StreamStatus, known: Container[str]) -> str | None:
    """The event's type when ``event`` is a usable event of a type in ``known`` (it is
    then sanitised in place), else None (counted in ``status``)."""
    if not isinstance(event, dict):
        status.decode_error("not_a_mapping")
        return None
    etype = event.get("type")
    if not isinstance(etype, str):
        status.decode_error("missing_type")
        return None
    if etype not in known:
        status.decode_error("unknown_type", etype[:64])
        return None
    if etype in TASK_EVENTS:
        if not _uuid_ok(event.get("uuid"), status):
            return None
        fields = TASK_FIELDS
    else:
        fields = WORKER_FIELDS
    # label values and keys: strings, encodable, no control characters, length capped
    clean_event(event, status, fields)
    _fix_times(event, status)
    return etype


def _uuid_ok(uuid: Any, status: StreamStatus) -> bool:
    if not isinstance(uuid, str) or not uuid:
        status.decode_error("missing_uuid")
        return False
    if len(uuid) > MAX_UUID_LENGTH:
        status.decode_error("bad_uuid")
        return False
    return True


def _fix_times(event: dict, status: StreamStatus) -> None:
    """A Unix time, finite, before year 5138: else now (counted unless just missing)."""
    now = time.time()
    ts = event.get("timestamp")
    if type(ts) is not float or not 0.0 < ts < _MAX_TIME:
        if type(ts) is int and 0 < ts < _MAX_TIME:
            event["timestamp"] = float(ts)
        else:
            event["timestamp"] = now
            if ts is not None:
                status.decode_error("bad_field", "timestamp", kept=True)
    received = event.get("local_received")
    if received is not None and (type(received) is not float
                                 or not 0.0 < received < _MAX_TIME):
        event["local_received"] = now
        status.decode_error("bad_field", "local_received", kept=True)
    status.last_event_at = now
