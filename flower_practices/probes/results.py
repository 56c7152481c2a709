"""Read-side view of a Redis result backend, used by the ``unread_results`` rule.

For each sampled task id, ``OBJECT IDLETIME celery-task-meta-<id>`` tells how long ago
the result key was last touched: ≈ the age since it was written means nobody read it
*by key*. A client waiting in ``AsyncResult.get()`` receives the result over pub/sub
instead: Celery's Redis backend subscribes to the channel ``celery-task-meta-<id>`` when
the task is sent and unsubscribes once the result is consumed (or the AsyncResult is
dropped), so ``PUBSUB CHANNELS celery-task-meta-*`` names the results clients hold right
now. Only key metadata and channel names are read, never the stored result.

Every method here does blocking network I/O (5 s timeouts): call them only from
:meth:`~flower_practices.rules.base.Rule.prepare`, never under the engine lock.
"""

from __future__ import annotations

from typing import Any

KEY_PREFIX = "celery-task-meta-"


class ResultStore:
    """Idle times of result keys in a Redis result backend."""

    def __init__(self, client: Any, key_prefix: str = KEY_PREFIX) -> None:
        self.client = client
        self.key_prefix = key_prefix

    @classmethod
    def from_url(cls, url: str) -> ResultStore | None:
        """A store for ``redis://``/``rediss://`` result backends; None for others."""
        scheme = url.split("://", 1)[0].lower()
        if scheme not in ("redis", "rediss"):
            return None
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5))

    def eviction_policy(self) -> str | None:
        """Redis' ``maxmemory-policy``; None when CONFIG is refused (managed Redis).

        Connection errors and timeouts propagate.
        """
        import redis

        try:
            policy = self.client.config_get("maxmemory-policy")
        except redis.ResponseError:
            return None
        value = (policy or {}).get("maxmemory-policy")
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return None if value is None else str(value)

    def idle_times(self, task_ids: list[str]) -> dict[str, int | None]:
        """Seconds since each result key was last read or written; None if absent.

        One pipelined round trip. Ids whose lookup returned an error reply (e.g. under
        an LFU policy) are left out. Connection errors and timeouts propagate.
        """
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.object("idletime", self.key_prefix + task_id)
        values = pipe.execute(raise_on_error=False)
        out: dict[str, int | None] = {}
        for task_id, value in zip(task_ids, values, strict=True):
            if value is None or (isinstance(value, int) and not isinstance(value, bool)):
                out[task_id] = value
        return out

    def subscribed(self, limit: int) -> tuple[set[str], bool]:
        """Task ids whose result channel has a subscriber now (one ``PUBSUB CHANNELS``
        call), at most ``limit`` of them; the flag says whether that is all of them.

        Connection errors and timeouts propagate.
        """
        channels = self.client.pubsub_channels(self.key_prefix + "*")
        out: set[str] = set()
        cut = len(self.key_prefix)
        for channel in channels[:limit]:
            if isinstance(channel, bytes):
                channel = channel.decode("utf-8", "replace")
            task_id = str(channel)[cut:]
            if 0 < len(task_id) <= 255:
                out.add(task_id)
        return out, len(channels) <= limit
