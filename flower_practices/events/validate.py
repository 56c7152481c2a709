"""Validating one raw event before it reaches the state: the engine's first step.

:func:`validate` rejects what cannot be an event (not a mapping, no or an unknown type, a
task event without a usable uuid), counting each in the stream status, and repairs what
can be kept: label values and keys are sanitised (:mod:`~flower_practices.events.sanitize`)
and the timestamps made finite Unix times. A timestamp more than
:data:`MAX_FUTURE_SECONDS` after the event's arrival (``local_received``, which every
consumer sets) is a sender's clock that runs ahead, or a forged event: it becomes the
arrival time (counted as ``bad_field``), so that no window, tally or finding is held
open into the future by it. O(1) per event, no allocation beyond what sanitising needs.
"""

from __future__ import annotations

import time
from collections.abc import Container
from typing import Any

from .sanitize import (
    MAX_LABEL_LENGTH,
    MAX_UUID_LENGTH,
    TASK_FIELDS,
    WORKER_FIELDS,
    clean_field,
    clean_uuid,
)
from .status import StreamStatus
from .types import TASK_EVENTS

#: Unix times from here on are not believed (year 5138)
_MAX_TIME = 1e11
#: seconds an event's timestamp may be ahead of its arrival (Celery warns of clock drift
#: past 16 s); one further ahead is replaced by the arrival time
MAX_FUTURE_SECONDS = 60.0


def validate(event: Any, status: StreamStatus, known: Container[str],
             cleaned: bool = False) -> str | None:
    """The event's type when ``event`` is a usable event of a type in ``known`` (it is
    then sanitised in place), else None (counted in ``status``). ``cleaned``: its text
    fields and task id went through :func:`~.sanitize.clean_event` already (Flower's tap).

    The common case -- clean short strings, float times -- is type and length checks
    inline (the label fields of :data:`~.sanitize.TASK_FIELDS` in one expression), no
    clock read: the event's ``local_received`` (set by every consumer when the message
    arrived) is the time of the last event. Anything else takes the helpers below.
    """
    etype = event.get("type") if type(event) is dict else None
    if type(etype) is not str or etype not in known:
        etype = _checked_type(event, status, known)  # the slow path: counts what it drops
        if etype is None:
            return None
    get = event.get
    if etype in TASK_EVENTS:
        uuid = get("uuid")
        if (type(uuid) is not str or not 0 < len(uuid) <= MAX_UUID_LENGTH) \
                and not _uuid_ok(uuid, status):
            return None
        if not cleaned:
            # TASK_FIELDS (hostname, name, queue, routing_key) checked in one expression;
            # anything off takes the generic loop, which cleans what needs it
            h, n, q, r = get("hostname"), get("name"), get("queue"), get("routing_key")
            if not ((h is None or type(h) is str and len(h) <= MAX_LABEL_LENGTH
                     and h.isprintable())
                    and (n is None or type(n) is str and len(n) <= MAX_LABEL_LENGTH
                         and n.isprintable())
                    and (q is None or type(q) is str and len(q) <= MAX_LABEL_LENGTH
                         and q.isprintable())
                    and (r is None or type(r) is str and len(r) <= MAX_LABEL_LENGTH
                         and r.isprintable())
                    and uuid.isprintable()):
                _clean_fields(event, status, TASK_FIELDS, uuid)
    elif not cleaned:
        _clean_fields(event, status, WORKER_FIELDS, get("uuid"))
    ts = get("timestamp")
    received = get("local_received")
    if type(received) is float and 0.0 < received < _MAX_TIME:
        now = received
        latest = received + MAX_FUTURE_SECONDS
    else:  # no arrival time (an event fed directly, not by a consumer): no skew check
        now = _fix_received(event, received, status)
        latest = _MAX_TIME
    if type(ts) is not float or not 0.0 < ts < latest:
        _fix_timestamp(event, ts, now, latest, status)
    status.last_event_at = now
    return etype


def _checked_type(event: Any, status: StreamStatus, known: Container[str]) -> str | None:
    """:func:`validate`'s first step for what its fast check did not pass (also a dict or
    str subclass): the type, or None (counted)."""
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
    return etype


def _uuid_ok(uuid: Any, status: StreamStatus) -> bool:
    if not isinstance(uuid, str) or not uuid:
        status.decode_error("missing_uuid")
        return False
    if len(uuid) > MAX_UUID_LENGTH:
        status.decode_error("bad_uuid")
        return False
    return True


def _clean_fields(event: dict, status: StreamStatus, fields: tuple[str, ...],
                  uuid: Any) -> None:
    """Label values and keys made strings, encodable, without control characters and
    length capped."""
    get = event.get
    for key in fields:
        value = get(key)
        if value is not None and (type(value) is not str
                                  or len(value) > MAX_LABEL_LENGTH
                                  or not value.isprintable()):
            clean_field(event, key, value, status)
    if type(uuid) is str and not uuid.isprintable() and len(uuid) <= MAX_UUID_LENGTH:
        clean_uuid(event, uuid, status)


def _fix_received(event: dict, received: Any, status: StreamStatus) -> float:
    """The arrival time when the consumer's ``local_received`` is missing or unusable:
    now (an unusable one replaced, counted)."""
    now = time.time()
    if received is not None:
        event["local_received"] = now
        status.decode_error("bad_field", "local_received", kept=True)
    return now


def _fix_timestamp(event: dict, ts: Any, now: float, latest: float,
                   status: StreamStatus) -> None:
    """A Unix time, finite, before ``latest`` (the arrival plus
    :data:`MAX_FUTURE_SECONDS`, else year 5138): else ``now`` (counted unless just
    missing)."""
    if type(ts) is int and 0 < ts < latest:
        event["timestamp"] = float(ts)
    else:
        event["timestamp"] = now
        if ts is not None:
            status.decode_error("bad_field", "timestamp", kept=True)
