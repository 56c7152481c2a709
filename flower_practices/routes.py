"""Which queue a message sent by exchange and routing key alone lands in.

A task routed with ``{"exchange": ..., "routing_key": ...}`` (``task_routes``, or
``apply_async(exchange=, routing_key=)``) names no queue: its task-sent event carries
``queue: None`` (a route entry) or the default queue (a call's options on a task without
a route: seen on Celery 5.7), the exchange and the routing key. Every per-queue figure taken from
events (waits, the pending backlog, task counts) must still be filed under the queue the
broker puts the message in -- the name its length and consumers are reported under --
not under the routing key. :class:`RouteTable` knows the bindings of the app's declared
queues (``app.amqp.queues``) and of the queues workers consume (``inspect
active_queues``), and resolves (exchange, routing key) as the broker would: ``direct``
by equal key, ``topic`` by AMQP's pattern rules (``*`` one word, ``#`` zero or more),
``fanout`` whatever the key. A key that several queues would receive, or none of the
known ones, stays unresolved (the caller keeps the event's queue, else the routing key).

Bounded, and cheap on hostile input: at most :data:`MAX_BINDINGS` bindings, at most
:data:`MAX_PATTERNS` topic patterns of at most :data:`MAX_PATTERN_WORDS` words per
exchange, and :data:`MAX_RESOLVED` remembered answers. A lookup touches only the bindings
of the message's exchange: a direct key is one dict lookup, a topic key at most
``MAX_PATTERNS`` short matches; an unknown exchange costs one dict lookup. Names are label
text already (cleaned by the caller).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .events.sanitize import label_text

#: bindings kept (the app's queues and the workers' replies): beyond it, new ones ignored
MAX_BINDINGS = 1000
#: topic patterns kept per exchange, and the words a pattern may have (longer ignored)
MAX_PATTERNS = 16
MAX_PATTERN_WORDS = 16
#: (exchange, routing key) answers remembered; cleared when full
MAX_RESOLVED = 4096

_MISSING = object()


def queue_bindings(queues: Iterable[Any]) -> tuple[tuple[str, str, str, str], ...]:
    """(exchange, exchange type, routing key, queue) of every binding of ``queues``, each
    in the shape of kombu's ``Queue.as_dict(recurse=True)`` (what a worker answers to
    ``inspect active_queues``): the queue's own exchange and key, and its ``bindings``.
    Cleaned as event fields are; malformed entries are skipped."""
    out: list[tuple[str, str, str, str]] = []
    for q in queues:
        if not isinstance(q, dict) or not (name := label_text(q.get("name"))):
            continue
        extra = q.get("bindings")
        for b in [q, *(extra if isinstance(extra, list) else ())]:
            if not isinstance(b, dict):
                continue
            exchange = b.get("exchange")
            kind = exchange.get("type") if isinstance(exchange, dict) else None
            ex_name = label_text(exchange.get("name") if isinstance(exchange, dict)
                                 else exchange)
            key = label_text(b.get("routing_key"))
            if ex_name and key is not None:
                out.append((ex_name, kind if isinstance(kind, str) else "direct", key, name))
    return tuple(out)


def topic_matches(pattern: str, key: str) -> bool:
    """``key`` matches the AMQP topic ``pattern`` (``*``: one word, ``#``: zero or more
    words; words separated by dots)."""
    return _matches(pattern.split("."), key.split("."))


def _matches(parts: list[str], words: list[str]) -> bool:
    # the positions in ``words`` the pattern so far can end at, kept as a set: a literal
    # or ``*`` only moves them on by one, ``#`` opens every later one; no backtracking,
    # and a mismatch empties the set at once (the usual miss costs a word or two)
    n = len(words)
    reach = {0}
    for part in parts:
        if part == "#":
            reach = set(range(min(reach), n + 1))
        elif part == "*":
            reach = {j + 1 for j in reach if j < n}
        else:
            reach = {j + 1 for j in reach if j < n and words[j] == part}
        if not reach:
            return False
    return n in reach


class RouteTable:
    """Bindings (exchange, kind, routing key -> queue) and the queue they route to."""

    __slots__ = ("_seen", "_direct", "_topic", "_fanout", "_resolved")

    def __init__(self) -> None:
        #: (exchange, kind, routing key or pattern, queue) of every binding kept
        self._seen: set[tuple[str, str, str, str]] = set()
        #: direct: (exchange, routing key) -> queues; topic: exchange -> (pattern words,
        #: queue) pairs; fanout: exchange -> queues
        self._direct: dict[tuple[str, str], set[str]] = {}
        self._topic: dict[str, list[tuple[list[str], str]]] = {}
        self._fanout: dict[str, set[str]] = {}
        #: (exchange, routing key) -> queue, or None: several queues or none
        self._resolved: dict[tuple[str, str], str | None] = {}

    def __bool__(self) -> bool:
        return bool(self._seen)

    def bind(self, exchange: str, kind: str, routing_key: str, queue: str) -> None:
        """``queue`` is bound to ``exchange`` (of type ``kind``) with ``routing_key``."""
        if not queue or not isinstance(exchange, str) or not isinstance(routing_key, str):
            return
        kind = kind if kind in ("topic", "fanout") else "direct"
        key = (exchange, kind, routing_key, queue)
        if key in self._seen or len(self._seen) >= MAX_BINDINGS:
            return
        if kind == "topic":
            patterns = self._topic.setdefault(exchange, [])
            if len(patterns) >= MAX_PATTERNS \
                    or routing_key.count(".") >= MAX_PATTERN_WORDS:
                return
            patterns.append((routing_key.split("."), queue))
        elif kind == "fanout":
            self._fanout.setdefault(exchange, set()).add(queue)
        else:
            self._direct.setdefault((exchange, routing_key), set()).add(queue)
        self._seen.add(key)
        self._resolved.clear()  # answers may change

    def bind_all(self, bindings: Iterable[tuple[str, str, str, str]]) -> None:
        for exchange, kind, routing_key, queue in bindings:
            self.bind(exchange, kind, routing_key, queue)

    def queue_for(self, exchange: str, routing_key: str) -> str | None:
        """The one known queue a message sent to ``exchange`` with ``routing_key`` lands
        in; None when no known binding routes it, or several queues would get it."""
        key = (exchange, routing_key)
        hit = self._resolved.get(key, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
        found = set(self._direct.get(key, ()))
        found.update(self._fanout.get(exchange, ()))
        patterns = self._topic.get(exchange)
        if patterns:
            words = routing_key.split(".")
            for parts, queue in patterns:
                if queue not in found and _matches(parts, words):
                    found.add(queue)
        answer = found.pop() if len(found) == 1 else None
        if len(self._resolved) >= MAX_RESOLVED:
            self._resolved.clear()
        self._resolved[key] = answer
        return answer
