"""Under Flower, the plugin reads the event stream with the exporter's direct consumer
(Redis pub/sub, AMQP) and hands Flower's own state the same events, one IOLoop callback per
message: checked with a real Flower, a real worker on real Redis and RabbitMQ, and
against ``event_consumer = "kombu"`` (Celery's receiver, as stock Flower reads)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import make_producer
from tests.support.events import publish_raw
from tests.support.exporter import wait_for
from tests.support.worker import WorkerProcess
from tests.test_flower_plugin_integration import FlowerProcess

pytestmark = [pytest.mark.slow]

TASKS = 12


def flower_counts(flower: FlowerProcess) -> dict[str, float]:
    """Flower's own ``flower_events_total`` for ``bad.compute`` by event type."""
    status, text = flower.get("/metrics")
    assert status == 200, text[:300]
    out: dict[str, float] = {}
    for m in re.finditer(r'^flower_events_total\{task="bad\.compute",type="([a-z-]+)",'
                         r'worker="[^"]*"\} ([0-9.e+]+)$', text, re.M):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def engine_succeeded(flower: FlowerProcess) -> float:
    """The engine's ``celery_task_events_total`` of succeeded ``bad.compute``, all queues."""
    text = flower.get("/metrics")[1]
    return sum(float(m.group(1)) for m in re.finditer(
        r'^celery_task_events_total\{queue="[^"]*",task="bad\.compute",type="succeeded"\} '
        r'([0-9.e+]+)$', text, re.M))


def run_workload(broker: str, tmp_path, consumer: str) -> tuple[FlowerProcess, str]:
    """Flower + plugin and a worker on ``broker``; ``TASKS`` tasks run. Returns Flower
    (stopped) and its log."""
    config = tmp_path / "practices.toml"
    config.write_text("[exporter]\nevaluation_interval = 0.5\nprobe_interval = 1.0\n"
                      f'event_consumer = "{consumer}"\n')
    producer = make_producer(broker)
    flower = FlowerProcess(broker, ["flower", "--plugins=flower_practices",
                                    f"--practices_config={config}"], tmp_path)
    try:
        with WorkerProcess("tests.apps.bad_tasks", broker, queues="celery",
                           env={"C_FORCE_ROOT": "1"}).start(producer) as worker:
            online = f'flower_worker_online{{worker="{worker.name}"}} 1.0'
            wait_for(lambda: online in flower.get("/metrics")[1], timeout=60,
                     message=f"Flower to see the worker online\n{flower.output()}")
            for i in range(TASKS):
                producer.send_task("bad.compute", args=(i,))
            want = {"task-sent": TASKS, "task-received": TASKS, "task-started": TASKS,
                    "task-succeeded": TASKS}
            wait_for(lambda: flower_counts(flower) == want, timeout=60,
                     message=f"Flower's own state to count every event once: "
                             f"{flower_counts(flower)}\n{flower.output()}")
            # the plugin's engine saw the same stream
            status, body = flower.get("/api/practices")
            assert status == 200, body[:300]
            stream = json.loads(body)["stream"]
            assert stream["connected"] is True, stream
            # (summed over queues: a task-received that overtakes the task's first
            # task-sent is counted before its queue is known, README "How it works")
            wait_for(lambda: engine_succeeded(flower) == TASKS, timeout=30,
                     message=f"the engine to count every task: {engine_succeeded(flower)}")
        return flower, flower.output()
    finally:
        flower.stop()


@pytest.mark.redis
def test_flower_reads_redis_with_the_direct_consumer(redis_url: str, tmp_path) -> None:
    _, log = run_workload(redis_url, tmp_path, "auto")
    assert "Flower reads events with the direct Redis path" in log, log


@pytest.mark.rabbitmq
def test_flower_reads_rabbitmq_with_the_direct_consumer(amqp_url: str, tmp_path) -> None:
    _, log = run_workload(amqp_url, tmp_path, "auto")
    assert "Flower reads events with the direct AMQP consumer" in log, log


@pytest.mark.redis
def test_event_consumer_kombu_keeps_celerys_receiver_under_flower(redis_url: str,
                                                                  tmp_path) -> None:
    _, log = run_workload(redis_url, tmp_path, "kombu")
    assert "Flower reads events with the direct" not in log, log


@pytest.mark.redis
def test_events_flower_cannot_take_do_not_stop_the_stream(redis_url: str, tmp_path) -> None:
    """A list body with a non-mapping and an event without ``hostname`` (Flower's state
    raises on it) in one message: Flower keeps serving, the non-mapping is counted, and
    the events after it still reach Flower's state and the engine."""
    config = tmp_path / "practices.toml"
    config.write_text("[exporter]\nevaluation_interval = 0.5\n")
    flower = FlowerProcess(redis_url, ["flower", "--plugins=flower_practices",
                                       f"--practices_config={config}"], tmp_path)
    try:
        wait_for(lambda: json.loads(flower.get("/api/practices")[1])["stream"]["connected"],
                 timeout=30, message=f"the stream to connect\n{flower.output()}")
        good = {"type": "task-sent", "uuid": "u-after", "name": "bad.compute",
                "queue": "celery", "hostname": "client@test", "timestamp": 1.0e9,
                "utcoffset": 0, "clock": 1}
        no_host = {"type": "task-received", "uuid": "u-nohost", "name": "bad.compute",
                   "timestamp": 1.0e9, "utcoffset": 0, "clock": 2}
        body = json.dumps([42, no_host, good]).encode()
        publish_raw(redis_url, [("task.multi", body, {})])

        def seen() -> bool:
            text = flower.get("/metrics")[1]
            return ('flower_events_total{task="bad.compute",type="task-sent",'
                    'worker="client@test"} 1.0' in text
                    and 'flower_practices_event_decode_errors_total{kind="not_a_mapping"} 1.0'
                    in text)
        wait_for(seen, timeout=30, message=f"the good event counted\n{flower.output()}")
        assert flower.proc.poll() is None
    finally:
        flower.stop()
