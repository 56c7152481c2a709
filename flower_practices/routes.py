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

Bounded: at most :data:`MAX_BINDINGS` bindings and :data:`MAX_RESOLVED` remembered
answers; names are label text already (cleaned by the caller).
"""

from __future__ import annotations

from collections.abc import Iterable

#: bindings kept (the app's queues and the workers' replies): beyond it, new ones ignored
MAX_BINDINGS = 1000
#: (exchange, routing key) answers remembered; cleared when full
MAX_RESOLVED = 4096

_MISSING = object()


def topic_matches(pattern: str, key: str) -> bool:
    """``key`` matches the AMQP topic ``pattern`` (``*``: one word, ``#``: zero or more
    words; words separated by dots). Dynamic programming, O(words of both)²: no
    backtracking blow-up on hostile patterns."""
    words = key.split(".")
    n = len(words)
    reach = [True] + [False] * n  # reach[j]: the pattern so far matches words[:j]
    for part in pattern.split("."):
        if part == "#":
            for j in range(1, n + 1):
                reach[j] = reach[j] or reach[j - 1]
        else:
            reach = [False] + [reach[j - 1] and (part == "*" or part == words[j - 1])
                               for j in range(1, n + 1)]
    return reach[n]


class RouteTable:
    """Bindings (exchange, kind, routing key -> queue) and the queue they route to."""

    __slots__ = ("_bindings", "_resolved")

    def __init__(self) -> None:
        #: (exchange, kind, routing key or pattern, queue), each once
        self._bindings: dict[tuple[str, str, str, str], None] = {}
        #: (exchange, routing key) -> queue, or None: several queues or none
        self._resolved: dict[tuple[str, str], str | None] = {}

    def __bool__(self) -> bool:
        return bool(self._bindings)

    def bind(self, exchange: str, kind: str, routing_key: str, queue: str) -> None:
        """``queue`` is bound to ``exchange`` (of type ``kind``) with ``routing_key``."""
        if not queue or not isinstance(exchange, str) or not isinstance(routing_key, str):
            return
        key = (exchange, kind if kind in ("topic", "fanout") else "direct", routing_key,
               queue)
        if key in self._bindings or len(self._bindings) >= MAX_BINDINGS:
            return
        self._bindings[key] = None
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
        found: set[str] = set()
        for bound_exchange, kind, pattern, queue in self._bindings:
            if bound_exchange != exchange:
                continue
            if kind == "fanout" or (kind == "direct" and pattern == routing_key) or (
                    kind == "topic" and topic_matches(pattern, routing_key)):
                found.add(queue)
        answer = found.pop() if len(found) == 1 else None
        if len(self._resolved) >= MAX_RESOLVED:
            self._resolved.clear()
        self._resolved[key] = answer
        return answer
