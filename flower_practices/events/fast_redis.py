"""The lean Redis event consumer: Celery events straight off Redis pub/sub.

kombu's Redis transport publishes each event with ``PUBLISH`` on the channel
``<fanout_prefix><exchange>/<routing_key>`` (``/{db}.celeryev/task.succeeded``) carrying a
JSON envelope whose ``body`` is the base64 of the JSON event. kombu's generic consumer
re-parses that through several layers (virtual channel, Message, serializer registry,
JSON object hooks); this module reads the same channel pattern on one plain socket
(``PSUBSCRIBE``, :mod:`.resp`), decodes with stdlib :mod:`json`, and hands each event through
the same steps as Celery's :meth:`EventReceiver.event_from_message` (clock, timestamp), so
the engine receives exactly the events the kombu path would give it.

When Redis closes the subscription while it stays up, :class:`~.redis_close.CloseCause`
tells (and logs) whether its ``client-output-buffer-limit pubsub`` is the cause.

:func:`fast_path_unsupported` says when this path cannot be used (AMQP and other
transports, Sentinel, ``global_keyprefix``, TLS, failover URLs); the caller then falls back
to :class:`~flower_practices.events.stream.EventStream`.
"""

from __future__ import annotations

import json
import logging
import time
from binascii import a2b_base64 as b64decode
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.events.receiver import CLIENT_CLOCK_SKEW
from celery.utils.time import utcoffset
from kombu.serialization import loads as kombu_loads
from kombu.utils.json import loads as kombu_json_loads

from .limits import (
    MAX_ENVELOPE_BYTES,
    MAX_EVENTS_PER_MESSAGE,
    MAX_MESSAGE_BYTES,
    MessageRefused,
    inflate,
)
from .reconnect import ReconnectingStream
from .redis_close import CloseCause
from .resp import (
    ERROR_REPLIES,
    FEED_BYTES,
    PROTOCOL_ERRORS,
    ClosedByServer,
    PubSubSocket,
    RespError,
)
from .sockopts import ReadPacer
from .status import StreamStatus
from .types import TASK_SENT

log = logging.getLogger("flower_practices.events")

#: the most events a decoder holds before it hands them on without waiting for the read's
#: end (``EventDecoder(hold=True)``)
HOLD_EVENTS = 4096
#: seconds of silence before we PING the server, and before we give up on it
IDLE_PING_SECONDS = 5.0
DEAD_AFTER_SECONDS = 15.0

def fast_path_unsupported(app: Celery) -> str | None:
    """None when the direct Redis path can consume ``app``'s events, else why not."""
    try:
        conn = app.connection_for_read()
    except Exception as exc:  # pragma: no cover - bad URL: the kombu path reports it
        return f"cannot parse broker URL ({type(exc).__name__})"
    try:
        transport = conn.transport_cls
        if transport != "redis":
            return f"transport {transport!r} is not plain redis"
        if conn.alt and len(conn.alt) > 1:
            return "several broker URLs (failover)"
        if conn.ssl or app.conf.broker_use_ssl:
            return "TLS connection options"
        options = conn.transport_options or {}
        if options.get("global_keyprefix"):
            return "global_keyprefix transport option"
        if str(app.conf.event_serializer or "json") != "json":
            return f"event_serializer {app.conf.event_serializer!r}"
        if not conn.hostname or "/" in conn.hostname:
            return "unix socket URL"
        try:
            redis_db(conn.virtual_host)
        except ValueError:
            return f"database {conn.virtual_host!r} is not a number"
    finally:
        conn.release()
    return None


def redis_db(virtual_host: Any) -> int:
    """The database number, parsed from the URL path exactly as kombu does."""
    if isinstance(virtual_host, int):
        return virtual_host
    if not virtual_host or virtual_host == "/":
        return 0
    return int(str(virtual_host).lstrip("/"))


def subscribe_pattern(app: Celery, db: int) -> str:
    """The ``PSUBSCRIBE`` pattern kombu's event receiver would use for ``app``."""
    options = app.conf.broker_transport_options or {}
    prefix: Any = options.get("fanout_prefix", True)
    if prefix is True:
        prefix = "/{db}."
    elif not prefix:
        prefix = ""
    prefix = str(prefix).format(db=db)
    exchange = app.conf.event_exchange or "celeryev"
    if options.get("fanout_patterns", True):
        # the receiver binds routing key '#', which kombu turns into the glob '*'
        return f"{prefix}{exchange}/*"
    return f"{prefix}{exchange}"


_stdlib_decode = json.JSONDecoder().decode

try:
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - orjson is a dependency; this is the fallback
    _orjson_loads = None


def json_loads(raw: bytes) -> Any:
    """UTF-8 JSON ``raw`` decoded as stdlib :mod:`json` decodes it, at orjson's speed."""
    if _orjson_loads is not None:
        try:
            return _orjson_loads(raw)
        except ValueError:  # orjson.JSONDecodeError: stdlib json may still accept it
            pass
    return _stdlib_decode(raw.decode())


def _loads_body(raw: bytes) -> Any:
    # kombu's JSON tags non-JSON types as {"__type__": ..., "__value__": ...}; only then
    # do we need its object hook (events never carry them, but stay identical).
    if b'"__type__"' in raw:
        return kombu_json_loads(raw)
    return json_loads(raw)


class EventDecoder:
    """Raw pub/sub payload -> Celery event dicts -> ``handler``; never raises.

    Each event gets what :meth:`EventReceiver.event_from_message` gives it (Lamport
    clock, ``timestamp`` moved to local time by ``utcoffset``, ``local_received``), inline
    and once per message where the result is the same for every event of it: the receive
    time and the clock's lock (held while the message's clocks are set, never while the
    handler runs). The local UTC offset (``time.localtime``, the costliest step) is read
    again when a second has passed since it was last read, so a daylight-saving change
    is applied within a second.
    """

    def __init__(self, app: Celery, handler: Callable[[dict], None],
                 status: StreamStatus,
                 batch_handler: Callable[[list | tuple], None] | None = None,
                 *, hold: bool = False) -> None:
        self.handler = handler
        #: takes the events of one message at once (``Engine.observe_many``): it counts
        #: and handles non-mappings itself, and never raises
        self.batch_handler = batch_handler
        #: with ``hold`` (and a ``batch_handler``), the events of several messages are
        #: held until :meth:`flush` (the consumers call it after each read: every message
        #: that one read brought is then handled in one call), at most :data:`HOLD_EVENTS`
        self._held: list | None = [] if hold and batch_handler is not None else None
        self.status = status
        self.clock = app.clock
        self._accept = {"json", "application/json"}
        self._here = 0
        self._here_until = 0.0

    def feed(self, data: bytes) -> None:
        """Decode one published envelope and deliver the event(s) it carries, within the
        caps of :mod:`.limits` (as the kombu path does)."""
        try:
            if len(data) > MAX_ENVELOPE_BYTES:
                raise MessageRefused("oversized_message", "envelope over the cap")
            envelope = json_loads(data)
            body = envelope["body"]
            props = envelope.get("properties")
            if props and props.get("body_encoding") == "base64":
                body = b64decode(body)
            elif isinstance(body, str):
                body = body.encode()
            headers = envelope.get("headers")
            compression = headers.get("compression") if type(headers) is dict else None
            if compression:
                body = inflate(body, compression)
            elif len(body) > MAX_MESSAGE_BYTES:
                raise MessageRefused("oversized_message", "body over the cap")
            ctype = envelope.get("content-type")
            if ctype == "application/json":
                payload = _loads_body(body)
            else:
                payload = kombu_loads(body, ctype, envelope.get("content-encoding"),
                                      accept=self._accept)
        except MessageRefused as exc:
            self.status.events += 1
            self.status.decode_error(exc.kind)
            return
        except Exception:
            self.status.events += 1
            self.status.decode_error("undecodable_body")
            return
        if type(payload) is list:
            if len(payload) > MAX_EVENTS_PER_MESSAGE:
                extra = len(payload) - MAX_EVENTS_PER_MESSAGE
                self.status.events += extra
                self.status.decode_error("too_many_events", n=extra)
                payload = payload[:MAX_EVENTS_PER_MESSAGE]
            self.many(payload)
        else:
            self.many((payload,))

    def one(self, body: Any, here: int | None = None) -> None:
        """One event body, as :meth:`many` (kept for callers of the earlier API; ``here``
        is ignored: the offset is cached, see the class docstring)."""
        self.many((body,))

    def many(self, bodies: list | tuple) -> None:
        """The same per-event path as :class:`~.stream.GuardedReceiver`, for the events
        of one message: ``event_from_message`` step for step, then ``handler``."""
        status = self.status
        clock = self.clock
        received = time.time()
        if received >= self._here_until:
            self._here = utcoffset()
            self._here_until = received + 1.0
        here = self._here
        with clock.mutex:  # == LamportClock.adjust / .forward, once per message
            value = clock.value  # kept in a local, stored back once
            for body in bodies:
                if type(body) is not dict:
                    continue
                try:
                    if body["type"] == TASK_SENT:
                        # clients never sync so cannot use their clock value
                        c = body["clock"] = (value or 1) + CLIENT_CLOCK_SKEW
                        value = (c if c > value else value) + 1  # == max(value, c) + 1
                    else:
                        try:
                            c = body["clock"]
                        except KeyError:
                            value += 1
                            body["clock"] = value
                        else:
                            value = (c if c > value else value) + 1
                    try:
                        offset, timestamp = body["utcoffset"], body["timestamp"]
                    except KeyError:
                        pass
                    else:
                        body["timestamp"] = timestamp - (offset - here) * 3600
                    body["local_received"] = received
                except Exception:
                    body["local_received"] = received  # never the sender's value
            clock.value = value
        if self.batch_handler is not None:
            held = self._held
            if held is not None:
                held.extend(bodies)
                if len(held) >= HOLD_EVENTS:
                    self.flush()
                return
            self._deliver(bodies)
            return
        handler = self.handler
        for body in bodies:
            if type(body) is not dict:
                status.events += 1
                status.decode_error("not_a_mapping")
                continue
            try:
                handler(body)
            except Exception:
                status.decode_error("handler_error")
                log.debug("event handler raised", exc_info=True)

    def flush(self) -> None:
        """Hand the held events (see ``hold``) to the batch handler, in order."""
        held = self._held
        if held:
            self._held = []
            self._deliver(held)

    def _deliver(self, bodies: list | tuple) -> None:
        try:
            self.batch_handler(bodies)  # type: ignore[misc]
        except Exception:  # pragma: no cover - Engine.observe_many never raises
            self.status.decode_error("handler_error")
            log.debug("event handler raised", exc_info=True)


class RedisEventStream(ReconnectingStream):
    """Consume ``app``'s events from Redis pub/sub until :meth:`stop`; reconnect on failure."""

    path = " (direct Redis pub/sub)"

    def __init__(self, app: Celery, handler: Callable[[dict], None], status: StreamStatus,
                 batch_handler: Callable[[list | tuple], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(app, handler, status, name="flower-practices-events-redis",
                         **kwargs)
        self.decoder = EventDecoder(app, handler, status, batch_handler, hold=True)
        with app.connection_for_read() as conn:
            self.db = redis_db(conn.virtual_host)
            self._address = (conn.hostname, int(conn.port or 6379))
            self._auth = (conn.userid or None, conn.password or None)
        self.pattern = subscribe_pattern(app, self.db)
        self.close_cause = CloseCause(self._address, self._auth)

    def _ready(self) -> None:
        super()._ready()
        self._wake_workers_async()

    def _session(self) -> None:
        conn = PubSubSocket(*self._address, username=self._auth[0], password=self._auth[1])
        try:
            self.close_cause.baseline()
            conn.send("PSUBSCRIBE", self.pattern)
            reply = conn.reply(10.0)
            if not (isinstance(reply, list) and reply and reply[0] == b"psubscribe"):
                raise RespError(f"unexpected reply to PSUBSCRIBE: {reply!r:.100}")
            self._connected()
            self._ready()
            try:
                self._consume(conn)
            except ClosedByServer:
                self.close_cause.closed = True
                raise
        finally:
            conn.close()

    def _consume(self, conn: PubSubSocket) -> None:
        conn.blocking_reads(1.0)
        recv, buffer = conn.recv, conn.buffer
        put, gets = conn.reader.feed, conn.reader.gets
        feed, flush = self.decoder.feed, self.decoder.flush
        stopped = self._stop_event.is_set
        last_read = time.monotonic()
        pinged = False
        monotonic, sleep = time.monotonic, time.sleep
        pause = ReadPacer(conn.sock, len(buffer)).pause
        while not stopped():
            n = recv()  # blocks up to 1 s: one system call per wake-up
            woke = monotonic()
            if not n:
                idle = monotonic() - last_read
                if idle > DEAD_AFTER_SECONDS:
                    raise ConnectionError(f"no data or PING reply for {idle:.0f}s")
                if idle > IDLE_PING_SECONDS and not pinged:
                    conn.send("PING")
                    pinged = True
                continue
            try:
                for offset in range(0, n, FEED_BYTES):
                    put(buffer, offset, min(FEED_BYTES, n - offset))
                    frame = gets()
                    while frame is not False:
                        if type(frame) is list:
                            if len(frame) == 4 and frame[0] == b"pmessage" and frame[3]:
                                feed(frame[3])
                        elif isinstance(frame, ERROR_REPLIES):
                            raise RespError(str(frame))
                        frame = gets()
            except PROTOCOL_ERRORS as exc:  # not RESP: the stream cannot be trusted
                raise RespError(f"RESP protocol error: {exc}") from None
            finally:
                flush()  # every event this read brought, in one engine call
            last_read = monotonic()
            pinged = False
            wait = pause(n, woke, last_read)  # coalesce reads: see events.sockopts
            if wait:
                sleep(wait)
