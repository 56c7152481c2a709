"""Scrapes that misbehave, labels that explode, and secrets that must not leak.

- A client that reads a multi-megabyte ``/metrics`` one byte at a time must not block
  event processing or other scrapes.
- Label cardinality caps hold through the real exporter and overflow is counted in
  ``flower_practices_label_overflow_total``.
- Task arguments, keyword arguments, results, exception messages and retry reasons that
  carry a distinctive secret go through a real worker; the secret never appears in
  ``/metrics``, ``/api/practices`` or the exporter's captured logs.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import threading
import uuid

import pytest
import redis

from flower_practices.apploader import load_app
from flower_practices.bounded import OTHER
from flower_practices.config import Settings
from tests.conftest import make_producer
from tests.support.events import publish_events, task_events
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow


class SlowScraper(threading.Thread):
    """GET /metrics, then read the response one byte every 20 ms."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.received = 0
        self.header = b""
        self.stop_event = threading.Event()

    def run(self) -> None:
        self.sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: slow\r\n\r\n")
        while not self.stop_event.wait(0.02):
            byte = self.sock.recv(1)
            if not byte:
                return
            self.received += 1
            if len(self.header) < 4096:
                self.header += byte

    def close(self) -> None:
        self.stop_event.set()
        self.join(5)
        self.sock.close()


def _label_values(text: str, label: str) -> set[str]:
    return set(re.findall(rf'{label}="([^"]*)"', text))


def test_slow_scrape_client_blocks_nothing(redis_url: str) -> None:
    app, _ = load_app(None, redis_url)
    # caps raised so the exposition is large (1,500 task names with runtime histograms)
    settings = Settings(evaluation_interval=1.0, probe_interval=1.0, max_task_names=2000,
                        max_series_per_metric=100_000)
    with RunningExporter(app, settings) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        events = []
        for i in range(1500):
            events += task_events(f"bulk.task_{i}", "bulk", "w1@h")
        publish_events(redis_url, events)
        wait_for(lambda: exporter.total("flower_practices_events_total") >= len(events),
                 message="bulk events counted")
        status, body = exporter.get("/metrics")
        size = len(body)
        assert status == 200 and size > 2_000_000  # far more than the socket buffers

        slow = SlowScraper(exporter.port)
        slow.start()
        try:
            wait_for(lambda: slow.received > 100, message="the slow client started reading")
            # events are still processed and other scrapes still complete
            publish_events(redis_url, task_events("after.slow", "bulk", "w1@h"))
            wait_for(lambda: exporter.total("celery_task_events_total", type="succeeded",
                                            task="after.slow") == 1,
                     message="events processed while a scrape is stuck")
            for _ in range(3):
                assert exporter.get("/healthz")[0] == 200
                assert exporter.get("/api/practices")[0] == 200
            assert slow.is_alive() and slow.received < size  # still mid-response
            assert slow.header.startswith(b"HTTP/1.1 200")
        finally:
            slow.close()
        assert exporter.get("/metrics")[0] == 200  # and after it went away


def test_label_caps_are_enforced_and_counted(redis_url: str) -> None:
    app, _ = load_app(None, redis_url)
    settings = Settings(evaluation_interval=1.0, probe_interval=3600.0, max_task_names=3,
                        max_queues=2, max_workers=2)
    with RunningExporter(app, settings) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        events = []
        for w in range(5):
            events.append({"type": "worker-heartbeat", "hostname": f"w{w}@caps",
                           "freq": 2.0, "active": 0, "processed": 0})
        for i in range(24):
            events += task_events(f"caps.task_{i % 8}", f"q{i % 4}", f"w{i % 5}@caps")
        publish_events(redis_url, events)
        wait_for(lambda: exporter.total("flower_practices_events_total") >= len(events),
                 message="all events counted")
        _, text = exporter.get("/metrics")
        tasks = _label_values(text, "task") - {""}
        queues = _label_values(text, "queue") - {""}
        workers = _label_values(text, "worker") - {""}
        assert OTHER in tasks and len(tasks - {OTHER}) <= 3, tasks
        assert OTHER in queues and len(queues - {OTHER}) <= 2, queues
        assert len(workers - {OTHER}) <= 2, workers
        for label in ("task", "queue", "worker"):
            assert exporter.total("flower_practices_label_overflow_total", label=label) > 0
        # every event is still counted, folded into __other__ where over the caps
        assert exporter.total("celery_task_events_total", type="succeeded") == 24


def test_no_argument_values_leak(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    secret = f"S3CR3T-{uuid.uuid4().hex}"
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="flower_practices")
    producer = make_producer(redis_url)
    app, _ = load_app(None, redis_url)
    # control: tap the raw event stream to prove the secret really travels in the events
    db = int(redis_url.rsplit("/", 1)[-1])
    tap = redis.Redis.from_url(redis_url).pubsub()
    tap.psubscribe(f"/{db}.celeryev/*")
    with RunningExporter(app) as exporter, \
            WorkerProcess("tests.apps.leaky", redis_url, queues="celery",
                          env={"FP_TEST_SECRET": secret}).start(producer):
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        model_like = f"<User: {secret}>"
        for _ in range(3):
            producer.send_task("leaky.echo", args=(secret, model_like),
                               kwargs={"password": secret, "user": model_like})
            producer.send_task("leaky.unreachable", args=(f"db://{secret}",))
        producer.send_task("leaky.retrying", args=(secret,))

        def done() -> bool:
            return (exporter.total("celery_task_events_total", type="succeeded",
                                   task="leaky.echo") == 3
                    and exporter.total("celery_task_events_total", type="failed") == 4
                    and exporter.total("celery_task_events_total", type="retried") == 1)

        wait_for(done, timeout=60, message="all leaky tasks processed")
        coverage = exporter.practices()["coverage"]
        if coverage.get("retryless_failure") == "active":
            wait_for(lambda: exporter.findings("retryless_failure"), timeout=30,
                     message="a retryless_failure finding (its evidence is checked too)")
        wait_for(lambda: exporter.total("flower_practices_evaluation_duration_seconds") > 0,
                 message="an evaluation ran")
        documents = {
            "/metrics": exporter.get("/metrics")[1],
            "/api/practices": exporter.get("/api/practices")[1],
            "/healthz": exporter.get("/healthz")[1],
        }
    carried = set()
    while (msg := tap.get_message(timeout=0.1)) is not None:
        if msg["type"] == "pmessage":
            body = base64.b64decode(json.loads(msg["data"])["body"]).decode()
            decoded = json.loads(body)  # workers send grouped (list) bodies too
            for event in decoded if isinstance(decoded, list) else [decoded]:
                if secret in json.dumps(event):
                    carried.add(event["type"])
    tap.close()
    assert {"task-sent", "task-received", "task-failed", "task-retried"} <= carried, carried
    logs = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in logs
    for path, text in documents.items():
        assert secret not in text, f"the secret leaked into {path}"
        assert secret[7:] not in text  # nor its distinctive part, e.g. re-quoted
