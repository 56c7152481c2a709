"""Queue length and consumer counts, read straight from the broker.

- Redis: ``LLEN`` of the queue list and of each priority sub-queue ``name\\x06\\x16N``
  (kombu's naming), pipelined; Redis has no consumer count (workers' ``active_queues``
  supplies it).
- RabbitMQ (AMQP): a passive ``queue.declare`` returns message and consumer counts.
- Other kombu virtual transports (memory, filesystem...): the channel's own size.

The ``priority`` label means one thing on every broker (:data:`PRIORITY_UNKNOWN`):

- ``"0"``..``"9"``: messages in that priority sub-queue, as the broker can tell (Redis;
  a plain Redis queue has only ``"0"``);
- ``""``: the queue's whole depth, split by priority unknown. RabbitMQ cannot tell the
  split (a passive ``queue.declare`` returns only message and consumer counts, not even
  the queue's ``x-max-priority``; the management API is a plugin we cannot count on;
  ``task-sent`` events carry no priority), so every RabbitMQ queue, priority queue or
  not, is reported as ``priority=""``, as are other transports. ``"0"`` therefore never
  stands for a queue's total on a broker that cannot split it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from kombu import Connection

PRIORITY_SEP = "\x06\x16"
#: priorities probed on Redis: kombu maps priorities 0..9 onto at most 10 sub-queues
REDIS_PRIORITIES = tuple(range(10))
#: the ``priority`` label of a depth whose split by priority the broker cannot tell
PRIORITY_UNKNOWN = ""


@dataclass(slots=True)
class QueueSample:
    """Lengths by priority label (``"0"``..``"9"``: that sub-queue; :data:`PRIORITY_UNKNOWN`:
    the whole depth, split unknown) and consumers, if known."""

    lengths: dict[str, int] = field(default_factory=dict)
    consumers: int | None = None
    exists: bool = True

    @property
    def total(self) -> int:
        return sum(self.lengths.values())


def redis_queue_key(queue: str, priority: int) -> str:
    return queue if priority == 0 else f"{queue}{PRIORITY_SEP}{priority}"


def probe_redis(client: Any, queues: list[str]) -> dict[str, QueueSample]:
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for priority in REDIS_PRIORITIES:
            pipe.llen(redis_queue_key(queue, priority))
    values = pipe.execute()
    out: dict[str, QueueSample] = {}
    i = 0
    for queue in queues:
        sample = QueueSample()
        for priority in REDIS_PRIORITIES:
            n = int(values[i])
            i += 1
            if priority == 0 or n:
                sample.lengths[str(priority)] = n
        out[queue] = sample
    return out


def probe_amqp(conn: Connection, queues: list[str]) -> dict[str, QueueSample]:
    out: dict[str, QueueSample] = {}
    channel = conn.channel()
    try:
        for queue in queues:
            try:
                _, messages, consumers = channel.queue_declare(queue=queue, passive=True)
            except conn.channel_errors:
                # 404 NOT_FOUND closes the channel: the queue does not exist (yet).
                out[queue] = QueueSample(lengths={}, consumers=0, exists=False)
                with contextlib.suppress(Exception):
                    channel.close()
                channel = conn.channel()
                continue
            out[queue] = QueueSample(lengths={PRIORITY_UNKNOWN: int(messages)},
                                     consumers=int(consumers))
    finally:
        with contextlib.suppress(Exception):
            channel.close()
    return out


def probe_virtual(conn: Connection, queues: list[str]) -> dict[str, QueueSample]:
    channel = conn.default_channel
    out: dict[str, QueueSample] = {}
    for queue in queues:
        try:
            n = channel._size(queue)
        except Exception:
            n = 0
        out[queue] = QueueSample(lengths={PRIORITY_UNKNOWN: int(n or 0)})
    return out


def probe_queues(conn: Connection, queues: list[str]) -> dict[str, QueueSample]:
    """Probe ``queues`` on ``conn``'s broker; raises on connection errors."""
    if not queues:
        return {}
    driver = conn.transport.driver_type
    if driver == "redis":
        return probe_redis(conn.default_channel.client, queues)
    if driver == "amqp":
        return probe_amqp(conn, queues)
    return probe_virtual(conn, queues)
