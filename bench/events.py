"""A synthetic but realistic Celery event stream, encoded exactly as kombu publishes it.

kombu's Redis transport sends each event with ``PUBLISH /{db}.celeryev/<routing_key>`` and
a JSON envelope whose ``body`` is the base64 of the JSON event (see
``kombu.transport.redis.Channel._put_fanout``); :func:`envelope` rebuilds that envelope
byte for byte. The stream: tasks of ``names`` task names over ``queues`` queues run by
``workers`` workers (sent, received, started, succeeded; every 10th fails, every 20th is
retried first, its second task-received carrying ``retries=1`` as Celery's does),
interleaved with a heartbeat per worker every 2 s of stream time.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator


def envelope(event: dict) -> bytes:
    """The bytes kombu PUBLISHes for one event (json serializer, base64 body)."""
    body = json.dumps(event).encode()
    routing_key = event["type"].replace("-", ".")
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": event["hostname"]},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }).encode()


def channel(db: int, event: dict) -> str:
    return f"/{db}.celeryev/{event['type'].replace('-', '.')}"


def stream(n_events: int, *, start: float, workers: int = 20, names: int = 20,
           queues: int = 5, rate: float = 5000.0) -> Iterator[dict]:
    """``n_events`` events whose timestamps advance at ``rate`` events per second."""
    clock = 0
    produced = 0
    dt = 1.0 / rate
    ts = start
    next_beat = start
    task_i = 0
    processed = [0] * workers
    while produced < n_events:
        if ts >= next_beat:
            for w in range(workers):
                clock += 1
                yield {"hostname": f"worker{w}@bench", "utcoffset": 0, "pid": 1000 + w,
                       "clock": clock, "freq": 2.0, "active": 1, "processed": processed[w],
                       "loadavg": [0.5, 0.4, 0.3], "sw_ident": "py-celery",
                       "sw_ver": "5.7.0", "sw_sys": "Linux", "timestamp": ts,
                       "type": "worker-heartbeat"}
                produced += 1
            next_beat += 2.0
        task_i += 1
        w = task_i % workers
        host = f"worker{w}@bench"
        name = f"proj.tasks.task_{task_i % names}"
        queue = f"queue{task_i % queues}"
        tid = str(uuid.uuid4())
        common = {"hostname": host, "utcoffset": 0, "pid": 1000 + w}
        clock += 1
        yield {"hostname": "web1@bench", "utcoffset": 0, "pid": 99, "clock": clock,
               "uuid": tid, "root_id": tid, "parent_id": None, "name": name,
               "args": "(42, 'order-1234')", "kwargs": "{'notify': True}",
               "retries": 0, "eta": None, "expires": None, "queue": queue,
               "exchange": "", "routing_key": queue, "timestamp": ts, "type": "task-sent"}
        phases = ["task-received", "task-started"]
        if task_i % 20 == 0:
            phases += ["task-retried", "task-received", "task-started"]
        phases.append("task-failed" if task_i % 10 == 0 else "task-succeeded")
        retries = 0
        for etype in phases:
            ts += dt
            clock += 1
            ev = {**common, "clock": clock, "uuid": tid, "timestamp": ts, "type": etype}
            if etype == "task-received":
                ev.update(name=name, args="(42, 'order-1234')", kwargs="{'notify': True}",
                          root_id=tid, parent_id=None, retries=retries, eta=None,
                          expires=None)
            elif etype == "task-succeeded":
                ev.update(result="{'status': 'ok'}", runtime=0.004)
                processed[w] += 1
            elif etype == "task-failed":
                ev.update(exception="ConnectionError('db down')",
                          traceback="Traceback (most recent call last): ...")
                processed[w] += 1
            elif etype == "task-retried":
                ev.update(exception="TimeoutError()", traceback="Traceback ...")
                retries += 1  # the retry is a new message: its task-received says 1
            yield ev
        produced += 1 + len(phases)
        ts += dt


def envelope_group(events: list[dict]) -> bytes:
    """A worker's buffered task events, published as one list body (``task.multi``)."""
    body = json.dumps(events).encode()
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": events[0]["hostname"]},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": "task.multi"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }).encode()


def encode(events: Iterator[dict], db: int, group: int = 1) -> list[tuple[str, bytes, int]]:
    """(channel, payload, events in it) to PUBLISH. With ``group`` > 1, each worker's
    task events are buffered into lists of up to ``group`` events, as Celery workers do
    (``EventDispatcher(buffer_group=['task'])``, flushed at 24); task-sent (clients) and
    heartbeats stay single."""
    out: list[tuple[str, bytes, int]] = []
    buffers: dict[str, list[dict]] = {}
    for ev in events:
        if group <= 1 or ev["type"] in ("task-sent", "worker-heartbeat"):
            out.append((channel(db, ev), envelope(ev), 1))
            continue
        buf = buffers.setdefault(ev["hostname"], [])
        buf.append(ev)
        if len(buf) >= group:
            out.append((f"/{db}.celeryev/task.multi", envelope_group(buf), len(buf)))
            buffers[ev["hostname"]] = []
    for buf in buffers.values():
        if buf:
            out.append((f"/{db}.celeryev/task.multi", envelope_group(buf), len(buf)))
    return out
