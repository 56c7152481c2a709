"""The direct Redis event path and Celery's generic receiver hand the engine the same events.

Both consumers run at once on one real Redis database and receive the same traffic: events
sent by Celery's own ``EventDispatcher`` (and events with a missing ``clock``/``utcoffset`` or
bad field types), a grouped list body published through kombu, and garbage (non-JSON envelopes,
bad base64, non-mapping and type-less bodies). They must deliver identical event dicts
(``local_received`` aside, it is each receiver's own clock) and both keep consuming.
"""

from __future__ import annotations

import time

import pytest
import redis
from celery import Celery
from kombu import Producer

from flower_practices.config import ConfigError, settings_from_mapping
from flower_practices.events.fast_redis import (
    EventDecoder,
    RedisEventStream,
    fast_path_unsupported,
    subscribe_pattern,
)
from flower_practices.events.resp import command, new_reader
from flower_practices.events.resp import frames as resp_frames
from flower_practices.events.status import StreamStatus
from flower_practices.events.stream import EventStream, make_event_stream
from tests.support.events import envelope, publish_events
from tests.support.exporter import wait_for

pytestmark = pytest.mark.redis


def _app(url: str) -> Celery:
    return Celery("fp-equiv", broker=url, set_as_current=False)


def _send_traffic(url: str, db: int) -> None:
    app = _app(url)
    raw = redis.Redis.from_url(url)
    with app.connection_for_write() as conn:
        d = app.events.Dispatcher(conn, hostname="w1@equiv", enabled=True)
        d.send("task-sent", uuid="u1", name="t.a", args="(1,)", kwargs="{}", queue="q1",
               retries=0)
        d.send("task-received", uuid="u1", name="t.a", args="(1,)", kwargs="{}")
        d.send("task-started", uuid="u1")
        d.send("task-succeeded", uuid="u1", result="2", runtime=0.01)
        d.send("worker-heartbeat", freq=2.0, active=1, processed=7)
        d.send("task-failed", uuid="u2", exception="ValueError()", traceback="...")
        d.send("task-weird", uuid="u3")  # unknown type: passed through, engine counts it
        producer = Producer(conn, exchange=d.exchange, serializer="json")
        # a grouped body (celery >= 4 buffers events into lists) and odd bodies
        producer.publish([{"type": "task-started", "uuid": "u4", "hostname": "w2@equiv",
                           "timestamp": 1700000000.0, "clock": 5, "utcoffset": 0},
                          {"type": "task-succeeded", "uuid": "u4", "hostname": "w2@equiv",
                           "timestamp": 1700000001.0}],  # no clock, no utcoffset
                         routing_key="task.multi")
        producer.publish({"uuid": "no-type"}, routing_key="task.x")
        producer.publish([1, "two", None], routing_key="task.x")
        producer.publish({"type": "task-started", "uuid": "u5", "timestamp": "yesterday",
                          "utcoffset": "x", "clock": "y"}, routing_key="task.started")
    # garbage straight on the channel kombu uses
    channel = f"/{db}.celeryev/task.sent"
    raw.publish(channel, b"\x00\xffnot json")
    raw.publish(channel, b'{"body": "!!!notbase64", "content-type": "application/json",'
                         b' "properties": {"body_encoding": "base64"}}')
    raw.publish(channel, b'{"no_body": 1}')
    raw.publish(channel, b"[]")
    with app.connection_for_write() as conn:
        d = app.events.Dispatcher(conn, hostname="w1@equiv", enabled=True)
        d.send("worker-offline", uuid="end")  # sentinel


PROBE_HOST = "probe@subscribed"


def _until_subscribed(redis_url: str, *received: list[dict]) -> None:
    """Publish heartbeats until every consumer has one (it has subscribed), then forget
    them: the traffic that follows is then seen whole by every consumer."""
    app = _app(redis_url)

    def seen() -> bool:
        with app.connection_for_write() as conn:
            app.events.Dispatcher(conn, hostname=PROBE_HOST, enabled=True).send(
                "worker-heartbeat", freq=2.0)
        return all(any(e.get("hostname") == PROBE_HOST for e in events)
                   for events in received)

    wait_for(seen, interval=0.2, message="every consumer subscribed")


def _without_probes(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("hostname") != PROBE_HOST]


def _normalise(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "local_received"}
            for e in _without_probes(events)]


def test_fast_and_generic_paths_deliver_identical_events(redis_url: str) -> None:
    db = int(redis_url.rsplit("/", 1)[-1])
    fast_events: list[dict] = []
    slow_events: list[dict] = []
    fast_status, slow_status = StreamStatus(), StreamStatus()
    fast_app, slow_app = _app(redis_url), _app(redis_url)
    assert fast_path_unsupported(fast_app) is None
    fast = RedisEventStream(fast_app, fast_events.append, fast_status, wakeup=False)
    slow = EventStream(slow_app, slow_events.append, slow_status, wakeup=False)
    assert fast.pattern == f"/{db}.celeryev/*" == subscribe_pattern(fast_app, db)
    fast.start()
    slow.start()
    try:
        wait_for(lambda: fast_status.connected and slow_status.connected,
                 message="both consumers connected")
        _until_subscribed(redis_url, fast_events, slow_events)
        _send_traffic(redis_url, db)

        def done(events: list[dict]) -> bool:
            return any(e.get("type") == "worker-offline" for e in events)

        wait_for(lambda: done(fast_events) and done(slow_events), message="sentinel seen")
        assert _normalise(fast_events) == _normalise(slow_events)
        types = [e.get("type") for e in _without_probes(fast_events)]
        assert types.count("task-started") == 3  # u1, u4 and the one with bad fields
        assert "task-weird" in types
        assert all("local_received" in e for e in fast_events)
        bad = next(e for e in fast_events if e.get("uuid") == "u5")
        assert bad["timestamp"] == "yesterday"  # passed through; the engine validates it
        assert fast_status.connected and slow_status.connected  # garbage did not kill them
        # bodies that are not mappings are counted alike; the fast path also counts the
        # envelopes kombu drops with a warning (not JSON, no body, bad base64)
        assert fast_status.decode_errors["not_a_mapping"] == 3
        assert slow_status.decode_errors["not_a_mapping"] == 3
        assert fast_status.decode_errors["undecodable_body"] == 4
        assert fast_status.reconnects == slow_status.reconnects == 0
    finally:
        fast.stop()
        slow.stop()


def test_generic_path_survives_an_undecodable_body(redis_url: str) -> None:
    """Without a decode-error handler kombu raises out of drain_events: counted instead."""
    db = int(redis_url.rsplit("/", 1)[-1])
    events: list[dict] = []
    status = StreamStatus()
    stream = EventStream(_app(redis_url), events.append, status, wakeup=False)
    stream.start()
    try:
        wait_for(lambda: status.connected, message="connected")
        _until_subscribed(redis_url, events)
        events.clear()
        raw = redis.Redis.from_url(redis_url)
        raw.publish(f"/{db}.celeryev/task.sent",
                    b'{"body": "!!!", "content-type": "application/json", '
                    b'"content-encoding": "utf-8", "properties": {"body_encoding": "base64"}}')
        app = _app(redis_url)
        with app.connection_for_write() as conn:
            app.events.Dispatcher(conn, hostname="w@x", enabled=True).send(
                "worker-heartbeat", freq=2.0)
        wait_for(lambda: _without_probes(events), message="the next event")
        assert status.decode_errors["undecodable_body"] == 1
        assert status.reconnects == 0 and status.connected
    finally:
        stream.stop()


def test_generic_path_survives_unparsable_envelopes_quietly(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """kombu's Redis transport parses each pub/sub envelope before any guard of ours and
    catches only TypeError/ValueError there: a deeply nested envelope (RecursionError)
    tore the connection down, a reconnect and a blind gap per message; each non-JSON one
    was logged with 4 KiB of its payload and a traceback. Both are now counted and
    dropped, the stream stays connected, and the raw payload is never logged."""
    db = int(redis_url.rsplit("/", 1)[-1])
    events: list[dict] = []
    status = StreamStatus()
    stream = EventStream(_app(redis_url), events.append, status, wakeup=False)
    stream.start()
    try:
        wait_for(lambda: status.connected, message="connected")
        _until_subscribed(redis_url, events)
        events.clear()
        raw = redis.Redis.from_url(redis_url)
        channel = f"/{db}.celeryev/task.sent"
        garbage = [b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json
                   b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
                   b"\xff SECRET-PAYLOAD not json", b"[1, 2]", b"42", b"null",
                   b" " * (3 << 20)]  # over the envelope cap
        for data in garbage:
            raw.publish(channel, data)
        app = _app(redis_url)
        with app.connection_for_write() as conn:
            app.events.Dispatcher(conn, hostname="w@x", enabled=True).send(
                "worker-heartbeat", freq=2.0)
        wait_for(lambda: _without_probes(events), message="the next event")
        errors = status.decode_errors
        assert errors["undecodable_body"] == 6 and errors["oversized_message"] == 1, errors
        assert status.reconnects == 0 and status.gaps == 0 and status.connected
        assert "SECRET-PAYLOAD" not in caplog.text and "Traceback" not in caplog.text
        assert "Cannot process event" not in caplog.text
    finally:
        stream.stop()


@pytest.mark.parametrize(("broker", "fast"), [
    ("redis://127.0.0.1:6379/3", True),
    ("redis://:secret@127.0.0.1:6379", True),
    ("amqp://guest:guest@127.0.0.1:5672//", False),
    ("rediss://127.0.0.1:6380/0", False),
    ("sentinel://127.0.0.1:26379", False),
    ("redis+socket:///tmp/redis.sock", False),
    ("redis://a:6379/0;redis://b:6379/0", False),
])
def test_fast_path_selection(broker: str, fast: bool) -> None:
    app = _app(broker)
    stream = make_event_stream(app, lambda e: None, StreamStatus(), consumer="auto")
    assert isinstance(stream, RedisEventStream) is fast
    forced = make_event_stream(app, lambda e: None, StreamStatus(), consumer="kombu")
    assert isinstance(forced, EventStream)


def test_global_keyprefix_and_custom_fanout_prefix() -> None:
    app = _app("redis://127.0.0.1:6379/4")
    app.conf.broker_transport_options = {"global_keyprefix": "x:"}
    assert "global_keyprefix" in (fast_path_unsupported(app) or "")
    app = _app("redis://127.0.0.1:6379/4")
    app.conf.broker_transport_options = {"fanout_prefix": "pfx.", "fanout_patterns": False}
    assert fast_path_unsupported(app) is None
    assert subscribe_pattern(app, 4) == "pfx.celeryev"


def test_event_consumer_setting_is_validated() -> None:
    assert settings_from_mapping({"exporter": {"event_consumer": "kombu"}}).event_consumer \
        == "kombu"
    with pytest.raises(ConfigError, match="event_consumer"):
        settings_from_mapping({"exporter": {"event_consumer": "fastest"}})


@pytest.mark.parametrize("pure_python", [False, True], ids=["hiredis", "pure-python"])
def test_resp_frames_split_anywhere_are_reassembled(pure_python: bool) -> None:
    frames = [[b"pmessage", b"/0.celeryev/*", b"/0.celeryev/task.sent", b'{"body": "e30="}'],
              [b"pong", b""], [b"psubscribe", b"/0.celeryev/*", 1],
              [b"pmessage", b"p", b"c", b"x\r\ny" * 50]]
    wire = b"".join(command(*[f if isinstance(f, bytes) else str(f) for f in frame])
                    .replace(b"$1\r\n1\r\n", b":1\r\n") for frame in frames)
    buffer = bytearray(len(wire) + 10)
    buffer[:len(wire)] = wire
    for cut in range(1, len(wire)):
        reader = new_reader(pure_python)
        reader.feed(buffer, 0, cut)
        got = list(resp_frames(reader))
        reader.feed(buffer, cut, len(wire) - cut)
        got += list(resp_frames(reader))
        assert got == frames, cut
        assert reader.gets() is False


@pytest.mark.parametrize("pure_python", [False, True], ids=["hiredis", "pure-python"])
def test_resp_error_reply_raises(pure_python: bool) -> None:
    reader = new_reader(pure_python)
    reader.feed(b"-NOAUTH Authentication required.\r\n")
    with pytest.raises(ConnectionError, match="NOAUTH"):
        list(resp_frames(reader))
    reader = new_reader(pure_python)
    reader.feed(b"?garbage\r\n")
    with pytest.raises(ConnectionError, match="RESP"):
        list(resp_frames(reader))


def test_fast_path_authenticates(private_redis: dict) -> None:
    port = private_redis["port"]
    redis.Redis(port=port).config_set("requirepass", "pw-9f2")
    good, bad = StreamStatus(), StreamStatus()
    events: list[dict] = []
    ok = RedisEventStream(_app(f"redis://:pw-9f2@127.0.0.1:{port}/0"), events.append, good,
                          wakeup=False)
    wrong = RedisEventStream(_app(f"redis://:nope@127.0.0.1:{port}/0"), lambda e: None, bad,
                             wakeup=False)
    ok.start()
    wrong.start()
    try:
        wait_for(lambda: good.connected, message="authenticated stream connected")
        wait_for(lambda: "WRONGPASS" in bad.last_error or "invalid" in bad.last_error,
                 message="a wrong password reported as the reason")
        assert not bad.connected
        publish_events(f"redis://:pw-9f2@127.0.0.1:{port}/0",
                       [{"type": "worker-heartbeat", "hostname": "w@auth"}])
        wait_for(lambda: events, message="event through the authenticated stream")
    finally:
        ok.stop()
        wrong.stop()


def test_a_senders_local_received_never_becomes_the_last_event_time() -> None:
    """``local_received`` is the receiver's clock. An event that forges one far in the
    future (with a field Celery's own decoding chokes on, the path that used to keep the
    sender's value) must not move the last-event time, or the no-events stall alert
    would be silenced until then."""
    from flower_practices.config import Settings
    from flower_practices.engine import Engine

    status = StreamStatus()
    engine = Engine(Settings(), broker_url="redis://x/0", stream_status=status)
    decoder = EventDecoder(Celery("t", broker="memory://", set_as_current=False),
                           engine.observe, status, batch_handler=engine.observe_many)
    before = time.time()
    for utcoffset in (0, "not-a-number"):
        decoder.feed(envelope({"type": "worker-heartbeat", "hostname": "w@h", "freq": 2.0,
                               "timestamp": before, "utcoffset": utcoffset, "clock": 1,
                               "local_received": 9.9e10}))
        assert before <= status.last_event_at <= time.time(), utcoffset


def test_a_holding_decoder_hands_one_reads_events_on_in_one_call_in_order() -> None:
    """``hold=True`` (both direct consumers): the events of every message decoded since
    the last :meth:`flush` reach the batch handler in one call, in order, the events of a
    list body among them; nothing is handed on before the flush, unless
    ``HOLD_EVENTS`` are held."""
    from flower_practices.events import fast_redis

    batches: list[list] = []
    status = StreamStatus()
    decoder = EventDecoder(Celery("t", broker="memory://", set_as_current=False),
                           lambda e: None, status, batch_handler=lambda b: batches.append(
                               [e.get("uuid") if isinstance(e, dict) else e for e in b]),
                           hold=True)

    def event(i: int) -> dict:
        return {"type": "task-received", "uuid": f"u{i}", "hostname": "w@h",
                "timestamp": time.time(), "utcoffset": 0, "clock": i}
    decoder.feed(envelope(event(1)))
    decoder.feed(envelope(event(2)))
    decoder.many([event(3), 7, event(4)])
    assert batches == []
    decoder.flush()
    assert batches == [["u1", "u2", "u3", 7, "u4"]]
    decoder.flush()
    assert len(batches) == 1  # nothing held: no empty call
    decoder.many([event(i) for i in range(fast_redis.HOLD_EVENTS)])
    assert len(batches) == 2 and len(batches[1]) == fast_redis.HOLD_EVENTS
