"""Read-side view of a Redis result backend, used by the ``unread_results`` rule.

For each sampled task id, ``OBJECT IDLETIME celery-task-meta-<id>`` tells how long ago
the result key was last touched: ≈ the age since it was written means nobody read it
*by key*. A client waiting in ``AsyncResult.get()`` receives the result over pub/sub
instead: Celery's Redis backend subscribes to the channel ``celery-task-meta-<id>`` when
the task is sent and unsubscribes once the result is consumed (or the AsyncResult is
dropped), so ``PUBSUB CHANNELS celery-task-meta-*`` names the results clients hold right
now. Only key metadata and channel names are read, never the stored result. An app that
shares its Redis (``global_keyprefix`` in ``result_backend_transport_options``) has both
behind its prefix (:func:`result_key_prefix`; known with ``-A``).

Idle times come in whole seconds of Redis' LRU clock, which ``serverCron`` advances
``hz`` times a second. :meth:`idle_times_clocked` reads Redis' ``TIME`` in the same round
trip, so that the caller can place the last access in a whole second of Redis' clock and
tell a read in a later second than the write from none, even less than a second after it
(see ``unread_results``).

Every method here does blocking network I/O (5 s timeouts): call them only from
:meth:`~flower_practices.rules.base.Rule.prepare`, never under the engine lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

KEY_PREFIX = "celery-task-meta-"


def result_key_prefix(conf: Any) -> str:
    """The prefix of the result keys (and channels) of an app with configuration
    ``conf``: :data:`KEY_PREFIX`, behind ``result_backend_transport_options``'
    ``global_keyprefix`` when one is set (an app sharing its Redis), joined as Celery's
    key-value backends join it (``_`` added unless it ends in ``:_-.``)."""
    try:
        options = conf.get("result_backend_transport_options") or {}
        prefix = options.get("global_keyprefix")
    except Exception:  # not a mapping: the backend would ignore it too
        return KEY_PREFIX
    if not isinstance(prefix, str) or not prefix:
        return KEY_PREFIX
    if prefix[-1] not in ":_-.":
        prefix += "_"
    return prefix + KEY_PREFIX


@dataclass(frozen=True, slots=True)
class Clock:
    """Redis' clock as seen by one round trip (Unix seconds).

    ``redis_time``: Redis' ``TIME``, read before the lookups of the same pipeline.
    ``offset_max``: ``redis_time`` minus the local time the round trip was sent at: an
    upper bound of Redis' clock minus the local clock (plus the time until ``TIME`` ran).
    ``lru_lag``: how far Redis' LRU clock may lag its ``TIME`` (one ``serverCron`` period,
    ``1/hz``, plus slack for a late cron).
    """

    redis_time: float
    offset_max: float
    lru_lag: float


#: slack added to one serverCron period: a busy Redis runs its cron late
_CRON_SLACK = 0.25


def _seconds(reply: Any) -> float | None:
    """Unix seconds from a ``TIME`` reply (seconds, microseconds); None if unusable."""
    if isinstance(reply, (tuple, list)) and len(reply) == 2:
        try:
            return float(reply[0]) + float(reply[1]) / 1e6
        except (TypeError, ValueError):
            return None
    return None


#: every call to the result backend's Redis gives up after this long (seconds)
_TIMEOUTS = {"socket_timeout": 5, "socket_connect_timeout": 5}


def _sentinel_master(url: str, options: Any) -> Any:
    """A client of the master a Sentinel result backend names, as Celery's
    ``SentinelBackend`` reaches it: ``sentinel://[user:password@]host:port[/db]`` chunks
    joined by ``;`` (db and credentials from the first), the master's name and the
    sentinels' own ``sentinel_kwargs`` from the transport options."""
    from urllib.parse import unquote, urlsplit

    import redis.sentinel

    options = options if isinstance(options, dict) else {}
    master = options.get("master_name")
    if not isinstance(master, str) or not master:
        raise ValueError("a sentinel:// result backend needs master_name in "
                         "result_backend_transport_options (known with -A)")
    chunks = [urlsplit(chunk.strip()) for chunk in url.split(";")]
    if not all(parts.hostname for parts in chunks):
        raise ValueError("a sentinel:// chunk without a host")
    hosts = [(str(parts.hostname), parts.port or 26379) for parts in chunks]
    first = chunks[0]
    credentials = {k: unquote(v) for k, v in (("username", first.username),
                                              ("password", first.password)) if v}
    path = first.path.strip("/")
    db = int(path) if path.isdigit() else 0
    kwargs = options.get("sentinel_kwargs")
    # the sentinels' own connections are bounded too (sentinel_kwargs replace the
    # connection options for them; redis-py before 8 has no default timeout)
    sentinels = redis.sentinel.Sentinel(
        hosts, sentinel_kwargs={**_TIMEOUTS, **kwargs} if isinstance(kwargs, dict) else None,
        min_other_sentinels=int(options.get("min_other_sentinels", 0) or 0), **_TIMEOUTS)
    return sentinels.master_for(master, db=db, **credentials, **_TIMEOUTS)


class ResultStore:
    """Idle times of result keys in a Redis result backend."""

    def __init__(self, client: Any, key_prefix: str = KEY_PREFIX) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self._hz: float | None = None

    @classmethod
    def from_url(cls, url: str, key_prefix: str = KEY_PREFIX,
                 transport_options: Any = None) -> ResultStore | None:
        """A store for ``redis://``/``rediss://`` and ``sentinel://`` result backends
        whose result keys start with ``key_prefix`` (:func:`result_key_prefix`); None
        for others. ``transport_options``: the app's
        ``result_backend_transport_options`` (Sentinel's ``master_name`` and
        ``sentinel_kwargs``). Raises ``ValueError`` for a URL it cannot use."""
        scheme = url.split("://", 1)[0].lower()
        if scheme == "sentinel":
            return cls(_sentinel_master(url, transport_options), key_prefix)
        if scheme not in ("redis", "rediss"):
            return None
        import redis

        return cls(redis.Redis.from_url(url, **_TIMEOUTS), key_prefix)

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

        One pipelined round trip. Ids whose lookup returned an error reply are left out;
        when every lookup did (``OBJECT`` refused: an ACL, a renamed command, an LFU
        policy), the first error reply is raised (a ``redis.ResponseError``). Connection
        errors and timeouts propagate.
        """
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.object("idletime", self.key_prefix + task_id)
        return _idle_values(task_ids, pipe.execute(raise_on_error=False))

    def idle_times_clocked(self, task_ids: list[str]
                           ) -> tuple[dict[str, int | None], Clock | None]:
        """:meth:`idle_times`, with Redis' clock read in the same round trip (None if
        ``TIME`` failed). Connection errors and timeouts propagate.

        Redis' LRU clock is known to the second only once ``lru_lag`` has passed since
        the last whole second of ``TIME``: when the check would fall earlier in a second,
        it waits for that first (at most ``lru_lag``, 0.35 s at the default ``hz`` 10),
        so that the caller's bound on the last access is exact rather than one second low.
        """
        import redis

        lag = 1.0 / self.hz() + _CRON_SLACK
        if lag < 0.9:
            try:
                now = _seconds(self.client.time())
            except redis.ResponseError:  # TIME renamed or refused: no exact bound
                now = None
            if now is not None and now % 1.0 < lag:
                time.sleep(lag - now % 1.0 + 0.005)
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        for task_id in task_ids:
            pipe.object("idletime", self.key_prefix + task_id)
        sent = time.time()
        values = pipe.execute(raise_on_error=False)
        out = _idle_values(task_ids, values[1:])
        redis_time = _seconds(values[0])
        clock = None if redis_time is None else Clock(redis_time, redis_time - sent, lag)
        return out, clock

    def hz(self) -> float:
        """The lower of Redis' ``hz`` and ``configured_hz`` (``INFO server``, read once);
        1 when INFO is refused or says nothing usable."""
        if self._hz is not None:
            return self._hz
        import redis

        value = 1.0
        try:
            info = self.client.info("server")
        except redis.ResponseError:
            info = {}
        rates = [info.get(k) for k in ("hz", "configured_hz")]
        rates = [float(r) for r in rates if isinstance(r, (int, float)) and r > 0]
        if rates:
            value = max(1.0, min(rates))
        self._hz = value
        return value

    def subscribed(self, limit: int) -> tuple[set[str], bool]:
        """Task ids whose result channel has a subscriber now (one ``PUBSUB CHANNELS``
        call), at most ``limit`` of them; the flag says whether that is all of them.

        Connection errors and timeouts propagate.
        """
        channels = self.client.pubsub_channels(_glob_escape(self.key_prefix) + "*")
        out: set[str] = set()
        cut = len(self.key_prefix)
        for channel in channels[:limit]:
            if isinstance(channel, bytes):
                channel = channel.decode("utf-8", "replace")
            task_id = str(channel)[cut:]
            if 0 < len(task_id) <= 255:
                out.add(task_id)
        return out, len(channels) <= limit


def _idle_values(task_ids: list[str], values: list[Any]) -> dict[str, int | None]:
    """Idle times (None: key absent) of the ids whose lookup answered; raises the first
    error reply when none did."""
    out: dict[str, int | None] = {}
    refused = None
    for task_id, value in zip(task_ids, values, strict=True):
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            out[task_id] = value
        elif refused is None and isinstance(value, Exception):
            refused = value
    if refused is not None and not out:
        raise refused
    return out


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern (a prefix may hold ``*?[]``)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
