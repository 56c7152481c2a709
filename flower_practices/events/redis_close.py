"""Why Redis closed our pub/sub connection: its ``client-output-buffer-limit pubsub``?

Redis closes a subscriber whose pending output passes that limit (the consumer fell
behind the event rate); the events published meanwhile are lost. :class:`CloseCause`
compares the server's ``INFO`` before the subscription and after a server-side close and
logs the cause when it is the limit.
"""

from __future__ import annotations

import logging

from .resp import PubSubSocket, RespError

log = logging.getLogger("flower_practices.events")

#: INFO fields compared across a server-side close
_INFO_KEYS = (b"run_id", b"evicted_clients", b"client_output_buffer_limit_disconnections")


def ask(address: tuple[str, int], auth: tuple[str | None, str | None],
        *args: str) -> object:
    """One command on a short-lived connection of its own; None if it fails."""
    try:
        conn = PubSubSocket(*address, username=auth[0], password=auth[1],
                            connect_timeout=2.0)
    except (OSError, RespError):
        return None
    try:
        conn.send(*args)
        return conn.reply(2.0)
    except (OSError, RespError, ValueError):
        return None
    finally:
        conn.close()


def info_facts(reply: object) -> dict[bytes, bytes]:
    """The :data:`_INFO_KEYS` fields of an ``INFO`` reply."""
    facts: dict[bytes, bytes] = {}
    if isinstance(reply, bytes):
        for line in reply.splitlines():
            key, _, value = line.partition(b":")
            if key in _INFO_KEYS:
                facts[key] = value.strip()
    return facts


class CloseCause:
    """Explains a pub/sub connection that Redis closed while staying up.

    Redis closes a subscriber whose pending output passes ``client-output-buffer-limit
    pubsub`` (the consumer fell behind, or one message over the hard limit was
    published: a single PUBLISH of 33 MB drops every subscriber under the defaults).
    The signal: the server closed our socket (EOF), the same server (``run_id``)
    answers right after, and either its ``client_output_buffer_limit_disconnections``
    counter (Redis >= 7.2) went up, or -- on older servers, which do not count them --
    a pubsub limit is configured and no client was evicted by ``maxmemory-clients``; a
    ``CLIENT KILL`` looks the same there,
    so the log says "most likely". A restart (new ``run_id``) is not blamed on the limit.
    """

    def __init__(self, address: tuple[str, int], auth: tuple[str | None, str | None]):
        self.address, self.auth = address, auth
        self.before: dict[bytes, bytes] = {}
        self.closed = False

    def baseline(self) -> None:
        """Before subscribing: remember the server's facts (a closed stream is then
        compared with them)."""
        facts = info_facts(ask(self.address, self.auth, "INFO"))
        if self.closed:
            self.explain(facts)
        self.before, self.closed = facts, False

    def explain(self, now: dict[bytes, bytes]) -> str | None:
        """The cause of the last server-side close, logged; None when not the limit."""
        before = self.before
        if not before or not now or before.get(b"run_id") != now.get(b"run_id"):
            return None  # unknown, or the server restarted
        key = b"client_output_buffer_limit_disconnections"
        limit = self._pubsub_limit()
        if key in before and key in now:
            if int(now[key]) <= int(before[key]):
                return None
            cause = ("Redis closed the event subscription for exceeding "
                     f"client-output-buffer-limit pubsub ({limit or 'limit not readable'})")
        else:
            evicted = b"evicted_clients"
            if int(now.get(evicted, 0)) > int(before.get(evicted, 0)):
                return None  # maxmemory-clients eviction, not the output buffer
            if limit is None or limit.split()[:2] == ["0", "0"]:
                return None
            cause = ("Redis closed the event subscription while staying up: most likely "
                     f"it exceeded client-output-buffer-limit pubsub ({limit}); this Redis "
                     "does not count such disconnections, and a CLIENT KILL looks the same")
        log.warning("%s. Either the exporter fell behind the event rate, or one message "
                    "larger than the limit was published on the event channel (then every "
                    "subscriber, Flower included, was dropped); the events published "
                    "meanwhile are lost: raise the pubsub limit, or give the exporter more "
                    "CPU (see the event_stream_gaps runbook)", cause)
        return cause

    def _pubsub_limit(self) -> str | None:
        """``<hard> <soft> <seconds>`` of the pubsub class, if CONFIG GET is allowed."""
        reply = ask(self.address, self.auth, "CONFIG", "GET", "client-output-buffer-limit")
        if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], bytes):
            words = reply[1].decode("ascii", "replace").split()
            for i, word in enumerate(words[:-3]):
                if word == "pubsub":
                    return " ".join(words[i + 1:i + 4])
        return None
