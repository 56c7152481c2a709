"""Wire strings in, safe strings out: the one place event text is made fit to be a label.

Every string field of an event that the state, the rules or the metrics use as a label
value or a dict key passes :func:`clean_event` before anything reads it, on every consumer
path (direct Redis, kombu, Flower's tap): ``Engine.observe`` calls it on the fields of the
event's kind (:data:`TASK_FIELDS`, :data:`WORKER_FIELDS`), and the Flower plugin calls it
on all of them (:data:`TEXT_FIELDS`, which Flower's own state and metrics read too) before
Flower's state sees the event.

- Text that cannot be encoded (lone UTF-16 surrogates such as the JSON ``"\\ud800"``),
  control characters (C0, DEL, C1) and every other character ``str.isprintable`` refuses
  except spaces (Unicode ``Zs``: no-break space, ideographic space...) -- bidirectional
  overrides and isolates, zero-width characters, the BOM, tag characters, line and
  paragraph separators, private-use and unassigned code points -- are replaced by
  U+FFFD, counted as the decode-error kind ``bad_text`` (the event is kept): a label or
  a page cell shows what the bytes say, never text reordered or hidden by them.
- A value longer than :data:`MAX_LABEL_LENGTH` characters is cut to that length, its last
  character being :data:`TRUNCATION_MARKER`, counted in ``StreamStatus.labels_truncated``
  (``flower_practices_label_overflow_total{label="length"}``).
- A task id longer than :data:`MAX_UUID_LENGTH` is not truncated (two ids would merge):
  ``Engine.observe`` drops the event (decode-error kind ``bad_uuid``).

Free text is never used as a label: of ``exception`` only the leading class name is read
(:func:`exception_class`: word characters and dots, at most 200), never the message; the
rules (``retryless_failure``, ``worker_process_killed``) and the metrics
(``celery_task_failures_total``) share that one parser.

The common case costs a length check and ``str.isprintable`` on a short string; only
values that fail it take the slow path.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .status import StreamStatus

#: longest label value kept as is (characters); longer ones end in TRUNCATION_MARKER
MAX_LABEL_LENGTH = 200
TRUNCATION_MARKER = "\u2026"  # "…"
#: longest task id accepted; an event with a longer one is dropped
MAX_UUID_LENGTH = 128
#: string fields of task events and of worker events the engine uses as labels or keys
TASK_FIELDS = ("hostname", "name", "queue", "routing_key")
WORKER_FIELDS = ("hostname", "sw_ident")
#: every string field used as a label or key, by us or by Flower's own state and metrics
TEXT_FIELDS = ("hostname", "name", "queue", "routing_key", "exchange", "sw_ident")
#: what replaces a lone surrogate or a control character
REPLACEMENT = "\ufffd"

_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(value: str, cap: int = MAX_LABEL_LENGTH) -> tuple[str, bool, bool]:
    """``(clean value, truncated, had bad characters)`` for any ``str``.

    Truncation comes first, so the replacement scans at most ``cap`` characters.
    """
    truncated = len(value) > cap
    if truncated:
        value = value[:cap - 1]
    value, bad = _BAD_CHARS.subn(REPLACEMENT, value)
    if not value.isprintable():  # format characters, separators...: rare, per character
        value, invisible = _replace_invisible(value)
        bad += invisible
    if truncated:
        value += TRUNCATION_MARKER
    return value, truncated, bad > 0


#: the space separators (Unicode ``Zs``) other than U+0020, which ``str.isprintable``
#: refuses but are text: kept
_SPACES = frozenset("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
                    "\u2008\u2009\u200a\u202f\u205f\u3000")


def _replace_invisible(value: str) -> tuple[str, bool]:
    """``value`` (at most a label's length, C0/C1 and surrogates already replaced) with
    each character that is neither printable nor a space replaced, and whether any was:
    bidi controls (U+202A-202E, U+2066-2069), zero-width characters (U+200B-200D,
    U+2060), the BOM, tag characters, U+2028/U+2029, private-use, unassigned."""
    cleaned = "".join([ch if ch.isprintable() or ch in _SPACES else REPLACEMENT
                       for ch in value])
    return cleaned, cleaned != value


def clean_event(event: dict, status: StreamStatus, _fields: tuple = TEXT_FIELDS,
                _cap: int = MAX_LABEL_LENGTH) -> None:
    """Sanitise ``event``'s text fields (``_fields``: all of them, unless the caller knows
    the event type) and task id in place (see the module docstring); never raises.

    A field of another type than ``str`` becomes None ("unknown"), counted as
    ``bad_field``. The task id is only cleaned of bad characters here; its length is
    checked by the caller, which drops the event.
    """
    get = event.get
    for key in _fields:
        value = get(key)
        if value is not None and (type(value) is not str or len(value) > _cap
                                  or not value.isprintable()):
            clean_field(event, key, value, status)
    uuid = get("uuid")
    if type(uuid) is str and not uuid.isprintable() and len(uuid) <= MAX_UUID_LENGTH:
        clean_uuid(event, uuid, status)


def clean_field(event: dict, key: str, value: object, status: StreamStatus) -> None:
    """The slow path of one field that is not a short printable ``str`` (see
    :func:`clean_event`)."""
    if not isinstance(value, str):
        event[key] = None
        status.decode_error("bad_field", key, kept=True)
        return
    if len(value) <= MAX_LABEL_LENGTH and value.isprintable():  # a str subclass
        return
    cleaned, truncated, bad = clean_text(value)
    event[key] = cleaned
    if truncated:
        status.labels_truncated += 1
    if bad:
        status.decode_error("bad_text", key, kept=True)


def clean_uuid(event: dict, uuid: str, status: StreamStatus) -> None:
    """A task id (at most :data:`MAX_UUID_LENGTH`) that is not printable: its bad
    characters replaced, counted as ``bad_text``."""
    cleaned, _, bad = clean_text(uuid, MAX_UUID_LENGTH)
    if bad:
        event["uuid"] = cleaned
        status.decode_error("bad_text", "uuid", kept=True)


def label_text(value: object) -> str | None:
    """``value`` cleaned as :func:`clean_event` cleans an event field (so that the names
    match), None if it is not a string: for names read from other sources than events,
    such as workers' remote-control replies."""
    if not isinstance(value, str):
        return None
    if len(value) <= MAX_LABEL_LENGTH and value.isprintable():
        return value
    return clean_text(value)[0]


_EXCEPTION_CLASS = re.compile(r"\s*([A-Za-z_][\w.]{0,199})")
#: characters of an ``exception`` field the class-name parser looks at, at most
_MAX_EXCEPTION_SCAN = 256


def exception_class(value: Any) -> str | None:
    """``"redis.exceptions.ConnectionError('x')"`` -> ``"redis.exceptions.ConnectionError"``.

    Only the leading identifier of a task-failed/task-retried ``exception`` field (a repr)
    is read, within its first 256 characters; the message (between the parentheses)
    never is. The result is at most 200 word characters and dots: fit to be a label value.
    None when the field is not a string or does not start with an identifier.
    """
    if not isinstance(value, str) or not value:
        return None
    m = _EXCEPTION_CLASS.match(value, 0, _MAX_EXCEPTION_SCAN)
    if m is None:
        return None
    name = m.group(1).strip(".")
    return name or None


#: billiard's wrapper of exceptions raised in the pool's main process (billiard >= 4.2:
#: a worker lost, a time limit): its repr, ``ExceptionWithTraceback()``, names no class,
#: the last line of the event's ``traceback`` does
EXCEPTION_WRAPPER = "ExceptionWithTraceback"
#: characters at the end of a ``traceback`` field read for its last line, at most
_MAX_TRACEBACK_TAIL = 512


def failure_exception(event: dict) -> tuple[str | None, str]:
    """The exception class a task-failed/task-retried ``event`` reports, and the one line
    it was read from (the ``exception`` repr, or the traceback's last line when the repr
    is billiard's wrapper :data:`EXCEPTION_WRAPPER`): ``(None, "")`` when it names none.

    A class read from a traceback is given by its bare name, as a repr gives it
    (``billiard.exceptions.WorkerLostError: ...`` -> ``WorkerLostError``). Only the
    leading identifier of that line is a name; the line itself is for callers that parse
    a fixed, bounded pattern of it (the signal of a lost worker), never to keep.
    """
    value = event.get("exception")
    name = exception_class(value)
    if name is None or name.rsplit(".", 1)[-1] != EXCEPTION_WRAPPER:
        return name, value if name is not None else ""
    tb = event.get("traceback")
    if not isinstance(tb, str) or not tb:
        return name, value
    for line in reversed(tb[-_MAX_TRACEBACK_TAIL:].splitlines()):
        line = line.strip()
        if line and line.strip('"'):
            inner = exception_class(line)
            if inner is None or inner.startswith("File"):
                return name, value
            return inner.rsplit(".", 1)[-1], line
    return name, value


def json_bytes(payload: Any) -> bytes:
    """``payload`` as UTF-8 JSON that any strict parser accepts (defence in depth): a lone
    surrogate that reached a string anyway becomes ``?`` instead of failing or producing
    an escape strict parsers reject, and a NaN or infinite number becomes ``null``."""
    try:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(payload), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinite floats replaced by None (containers copied)."""
    if isinstance(value, float):
        return value if value - value == 0.0 else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
