"""The direct AMQP consumer's frame reader, on real AMQP frames (built with py-amqp's own
serialisation) over a real socket pair: frames cut anywhere, bodies in several frames,
heartbeats, oversized bodies skipped unread, and the broker's close ending the session.
(Against a real RabbitMQ it is exercised by tests/test_rabbitmq_broker.py and the hostile
batches of tests/test_hostile_input.py.)"""

from __future__ import annotations

import socket
from struct import pack

import pytest
from amqp.basic_message import Message
from amqp.serialization import dumps

from flower_practices.events.amqp_frames import BrokerClosed, DeliveryReader


def frame(ftype: int, payload: bytes, channel: int = 1) -> bytes:
    return pack(">BHI", ftype, channel, len(payload)) + payload + b"\xce"


def message(body: bytes, *, chunk: int | None = None, **props: object) -> bytes:
    deliver = pack(">HH", 60, 60) + dumps("sLbss", ["ctag", 7, False, "celeryev", "task.x"])
    header = pack(">HHQ", 60, 0, len(body)) + Message(**props)._serialize_properties()
    out = frame(1, deliver) + frame(2, header)
    chunk = chunk or max(1, len(body))
    for i in range(0, len(body), chunk):
        out += frame(3, body[i:i + chunk])
    return out


class Harness:
    def __init__(self, max_body: int = 1000) -> None:
        self.a, self.b = socket.socketpair()
        self.b.settimeout(0.05)
        self.got: list[tuple[bytes, dict]] = []
        self.refused = 0
        self.reader = DeliveryReader(self.b, lambda body, props: self.got.append((body, props)),
                                     self._refuse, max_body=max_body)

    def _refuse(self) -> None:
        self.refused += 1

    def send(self, data: bytes, step: int | None = None) -> None:
        step = step or len(data)
        for i in range(0, len(data), step):
            self.a.sendall(data[i:i + step])
            self.reader.read()
        while self.reader.read():
            pass

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture
def harness():
    h = Harness()
    yield h
    h.close()


def test_frames_cut_anywhere_deliver_each_message_once(harness: Harness) -> None:
    data = b"".join(message(f'{{"type": "task-sent", "n": {i}}}'.encode(),
                            content_type="application/json", content_encoding="utf-8",
                            application_headers={"hostname": "w@h"}) for i in range(5))
    harness.send(data, step=1)
    assert [b for b, _ in harness.got] == [
        f'{{"type": "task-sent", "n": {i}}}'.encode() for i in range(5)]
    props = harness.got[0][1]
    assert props["content_type"] == "application/json"
    assert props["application_headers"] == {"hostname": "w@h"}
    assert harness.reader.received == len(data)


def test_properties_decoded_per_message_through_a_bounded_cache(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each message gets its own properties, decoded as py-amqp decodes them, when senders
    repeat theirs and when every message has new ones (the cache is cleared when full)."""
    monkeypatch.setattr("flower_practices.events.amqp_frames.PROPERTIES_CACHED", 4)
    hosts = ["w1@h", "w2@h", "w1@h", "w1@h", "w2@h"] + [f"pod-{i}@h" for i in range(9)]
    harness.send(b"".join(message(b"{}", content_type="application/json", priority=i % 3,
                                  application_headers={"hostname": host})
                          for i, host in enumerate(hosts)), step=7)
    assert [(p["application_headers"]["hostname"], p["priority"]) for _, p in harness.got] \
        == [(host, i % 3) for i, host in enumerate(hosts)]
    assert len(harness.reader._decoded) <= 4


def test_body_in_several_frames_and_heartbeats_between(harness: Harness) -> None:
    body = b"[" + b",".join(b'{"type": "task-started"}' for _ in range(20)) + b"]"
    data = frame(8, b"", channel=0) + message(body, chunk=37, content_type="application/json")
    harness.send(data + frame(8, b"", channel=0) + message(b"", content_type="x"), step=50)
    assert [b for b, _ in harness.got] == [body, b""]


def test_oversized_body_is_skipped_unread_and_counted() -> None:
    h = Harness(max_body=100)
    try:
        h.send(message(b"x" * 500, chunk=64) + message(b'{"ok": 1}'), step=100)
        assert h.refused == 1
        assert [b for b, _ in h.got] == [b'{"ok": 1}']
    finally:
        h.close()


def test_broker_close_ends_the_session(harness: Harness) -> None:
    close = pack(">HH", 10, 50) + dumps("BssBB", [320, "CONNECTION_FORCED - shutdown", 0, 0])
    harness.a.sendall(frame(1, close, channel=0))
    with pytest.raises(BrokerClosed, match="320 CONNECTION_FORCED"):
        harness.reader.read()


@pytest.mark.parametrize("bad", [
    frame(3, b"body before any header"),
    frame(2, pack(">HHQ", 60, 0, 1) + b"\x00\x00"),  # header without a deliver
    frame(5, b"?"),  # unknown frame type
    pack(">BHI", 1, 1, 4) + pack(">HH", 60, 60) + b"\x00",  # bad frame end
])
def test_out_of_place_frames_end_the_session(harness: Harness, bad: bytes) -> None:
    harness.a.sendall(bad)
    with pytest.raises(BrokerClosed):
        harness.reader.read()


def test_closed_socket_ends_the_session(harness: Harness) -> None:
    harness.a.close()
    with pytest.raises(BrokerClosed):
        harness.reader.read()


# -- which consumer, and what it declares ----------------------------------------------------
@pytest.mark.parametrize(("broker", "serializer", "direct"), [
    ("amqp://guest:guest@127.0.0.1:5672//", "json", True),
    ("pyamqp://guest:guest@127.0.0.1:5672/vh", "json", True),
    ("amqp://guest:guest@127.0.0.1:5672//", "pickle", False),
    ("amqps://guest:guest@127.0.0.1:5671//", "json", False),
    ("amqp://a:5672//;amqp://b:5672//", "json", False),
    ("redis://127.0.0.1:6379/0", "json", False),
    ("memory://", "json", False),
])
def test_direct_amqp_consumer_selection(broker: str, serializer: str, direct: bool) -> None:
    from celery import Celery

    from flower_practices.events.fast_amqp import AmqpEventStream
    from flower_practices.events.status import StreamStatus
    from flower_practices.events.stream import EventStream, make_event_stream

    app = Celery("sel", broker=broker, set_as_current=False)
    app.conf.event_serializer = serializer
    stream = make_event_stream(app, lambda e: None, StreamStatus(), consumer="auto")
    assert isinstance(stream, AmqpEventStream) is direct
    forced = make_event_stream(app, lambda e: None, StreamStatus(), consumer="kombu")
    assert isinstance(forced, EventStream)


def test_event_queue_declared_as_celerys_receiver_declares_it() -> None:
    from celery import Celery
    from kombu.transport.base import to_rabbitmq_queue_arguments

    from flower_practices.events.fast_amqp import AmqpEventStream, queue_arguments
    from flower_practices.events.status import StreamStatus

    app = Celery("decl", broker="amqp://guest:guest@127.0.0.1:5672//", set_as_current=False)
    for ttl, expires in ((5.0, 60.0), (0.5, 2.25)):
        app.conf.event_queue_ttl, app.conf.event_queue_expires = ttl, expires
        # kombu's conversion of the receiver's message_ttl/expires (seconds -> ms)
        assert queue_arguments(app) == to_rabbitmq_queue_arguments(
            {}, message_ttl=ttl, expires=expires)
    stream = AmqpEventStream(app, lambda e: None, StreamStatus())
    assert (stream.exchange, stream.queue_prefix) == ("celeryev", "celeryev")
    assert stream.exclusive and not stream.durable
