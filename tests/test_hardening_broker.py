"""The exporter against brokers that die, freeze, stay away and come back, mid-stream.

- Redis unreachable for 70 s (a private ``redis-server``, SIGKILLed and restarted on the
  same port) while events keep being published and a real worker keeps running: the
  exporter stays up and serving, ``/healthz`` answers 503 throughout the outage with a
  current reason, the blind time and the gap are counted, the stream is back within 6 s
  of Redis (back-off capped at 5 s), the old state survived, and events and tasks are
  counted again afterwards. Run on the default (direct Redis) path; the generic kombu
  path gets a shorter restart. (This is the one Redis kill/restart test.)
- Redis closing the subscription for its ``client-output-buffer-limit pubsub`` (an
  exporter paused while events flood in): the exporter logs that cause and reconnects.
- A private RabbitMQ node frozen with SIGSTOP: AMQP heartbeats turn ``/healthz`` 503
  within 30 s; after SIGCONT it is 200 again within 10 s. The same under Flower with the
  plugin, and a frozen private redis-server on the direct Redis path (PING timeout).
- RabbitMQ restarted mid-stream: a private RabbitMQ node of our own (own node name,
  ports and data directory, so the shared broker is never touched) is SIGKILLed and
  restarted while a worker runs tasks. If that node cannot be started, the test falls back
  to closing every connection of its own vhost on the shared broker from the server side
  (``rabbitmqctl close_all_connections --vhost``), which is how a broker-side drop looks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from flower_practices.apploader import load_app
from flower_practices.config import Settings
from tests.conftest import make_producer
from tests.support.brokers import AMQP_HOST, AMQP_PORT, in_ci, reachable, require
from tests.support.events import envelope
from tests.support.exporter import RunningExporter, free_port, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 70.0
#: the stream must be back this soon after the broker is (back-off cap 5 s + connecting)
BACK_WITHIN_SECONDS = 6.0


class EventPump(threading.Thread):
    """Publishes a task's events every 50 ms, riding out broker outages."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.sent = 0
        self.failed = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5,
                                      socket_timeout=0.5)
        db = client.connection_pool.connection_kwargs.get("db", 0)
        while not self.stop_event.wait(0.05):
            tid = str(uuid.uuid4())
            try:
                for etype in ("task-sent", "task-received", "task-started", "task-succeeded"):
                    ev = {"type": etype, "uuid": tid, "name": "pump.task", "queue": "pumpq",
                          "hostname": "pump@h", "timestamp": time.time(), "clock": 1,
                          "utcoffset": 0, "runtime": 0.001}
                    client.publish(f"/{db}.celeryev/{etype.replace('-', '.')}",
                                   envelope(ev))
                self.sent += 1
            except redis.RedisError:
                self.failed += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


def pumped(exporter: RunningExporter) -> float:
    return exporter.total("celery_task_events_total", type="succeeded", task="pump.task")


def _basic_succeeded(exporter: RunningExporter) -> float:
    return exporter.total("celery_task_events_total", type="succeeded", task="basic.add")


def _reason(exporter: RunningExporter) -> tuple[int, str]:
    status, body = exporter.get("/healthz")
    return status, json.loads(body)["reason"]


def test_redis_unreachable_for_70s(private_redis: dict, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flower_practices.events")
    url = private_redis["url"]
    producer = make_producer(url)
    app, _ = load_app(None, url)
    pump = EventPump(url)
    with RunningExporter(app) as exporter, \
            WorkerProcess("tests.apps.basic", url, queues="celery").start(producer):
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        pump.start()
        try:
            producer.send_task("basic.add", args=(1, 2))
            wait_for(lambda: pumped(exporter) >= 5 and _basic_succeeded(exporter) == 1,
                     message="pumped events and a real task counted")
            assert exporter.total("flower_practices_event_stream_gaps_total") == 0
            blind_before = exporter.total(
                "flower_practices_event_stream_disconnected_seconds_total")
            assert blind_before < 5  # only the start-up connect

            private_redis["kill"]()
            down_at = time.time()
            wait_for(lambda: exporter.get("/healthz")[0] == 503, timeout=20,
                     message="healthz 503 after Redis died")
            frozen = pumped(exporter)
            statuses = set()
            blind = []
            while time.time() - down_at < OUTAGE_SECONDS:
                status, reason = _reason(exporter)
                statuses.add(status)
                assert status == 503, reason
                assert "not connected" in reason and "disconnected for" in reason
                assert exporter.get("/metrics")[0] == 200  # still serving scrapes
                assert exporter.get("/api/practices")[0] == 200
                blind.append(exporter.total(
                    "flower_practices_event_stream_disconnected_seconds_total"))
                time.sleep(2.0)
            assert statuses == {503}
            # the blind time grows while the outage lasts (the ongoing gap included)
            assert blind == sorted(blind) and blind[-1] - blind[0] >= OUTAGE_SECONDS - 25
            assert exporter.total("flower_practices_event_stream_gaps_total") == 1
            # the reason is current: it says how long the stream has been down
            _, reason = _reason(exporter)
            shown = int(reason.split("disconnected for ")[1].split("s")[0])
            assert shown >= OUTAGE_SECONDS - 25, reason
            assert exporter.total("flower_practices_event_stream_connected") == 0
            assert pumped(exporter) == frozen  # nothing arrived, nothing invented
            assert pump.failed > 0  # the pump really hit a dead broker

            private_redis["start"]()
            wait_for(lambda: exporter.get("/healthz")[0] == 200, timeout=BACK_WITHIN_SECONDS,
                     interval=0.1, message=f"healthz 200 within {BACK_WITHIN_SECONDS}s "
                     "of Redis coming back")
            assert exporter.total("flower_practices_broker_reconnects_total") >= 1
            assert exporter.total("flower_practices_event_stream_connected") == 1
            assert exporter.total("flower_practices_event_stream_gaps_total") == 1
            total_blind = exporter.total(
                "flower_practices_event_stream_disconnected_seconds_total")
            assert OUTAGE_SECONDS - 10 <= total_blind - blind_before <= OUTAGE_SECONDS + 30
            assert _basic_succeeded(exporter) == 1  # the state survived the outage
            wait_for(lambda: pumped(exporter) >= frozen + 5, timeout=30,
                     message="pumped events counted again")

            def send_and_count() -> bool:
                producer.send_task("basic.add", args=(1, 1))
                return _basic_succeeded(exporter) >= 2

            wait_for(send_and_count, timeout=90, interval=2.0,
                     message="a real task counted after the outage")
        finally:
            pump.stop()
    # a restart is not blamed on the output-buffer limit
    assert not [r for r in caplog.records if "client-output-buffer-limit" in r.getMessage()]


def test_pubsub_output_buffer_limit_is_logged(private_redis: dict, tmp_path: Path) -> None:
    """An exporter that falls behind a flood of events is dropped by Redis once its pending
    output passes ``client-output-buffer-limit pubsub``; it logs that cause, counts the gap
    and reconnects. Falling behind is made certain by pausing the exporter process
    (SIGSTOP, as a long GC pause or CPU starvation would) while ordinary events flood in."""
    url = private_redis["url"]
    client = redis.Redis.from_url(url)
    client.config_set("client-output-buffer-limit", "pubsub 65536 32768 1")
    pid = client.info("server")["process_id"]
    port = free_port()
    log_path = tmp_path / "exporter.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flower_practices", "exporter", "--broker", url,
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def gaps() -> float:
        for family in text_string_to_metric_families(get("/metrics")[1]):
            if family.name == "flower_practices_event_stream_gaps":
                return family.samples[0].value
        raise AssertionError("flower_practices_event_stream_gaps_total not exposed")

    try:
        wait_for(lambda: get("/healthz")[0] == 200, timeout=30, message="healthz 200")
        event = {"type": "task-succeeded", "uuid": "", "name": "flood.task", "queue": "q",
                 "hostname": "h@h", "timestamp": time.time(), "clock": 1, "utcoffset": 0,
                 "runtime": 0.01}
        proc.send_signal(signal.SIGSTOP)
        try:
            def flood_until_dropped() -> bool:
                pipe = client.pipeline(transaction=False)
                for _ in range(2000):
                    event["uuid"] = str(uuid.uuid4())
                    pipe.publish("/0.celeryev/task.succeeded", envelope(event))
                pipe.execute()
                return not client.client_list(_type="pubsub")

            wait_for(flood_until_dropped, timeout=60, interval=0,
                     message="Redis to drop the paused, flooded subscriber")
        finally:
            proc.send_signal(signal.SIGCONT)
        wait_for(lambda: gaps() >= 1, timeout=30, message="the gap counted")
        wait_for(lambda: get("/healthz")[0] == 200, timeout=15, message="reconnected")
        wait_for(lambda: "client-output-buffer-limit pubsub (65536 32768 1)"
                 in log_path.read_text(errors="replace"), timeout=15,
                 message="the cause logged")
        assert client.info("server")["process_id"] == pid  # Redis itself stayed up
    finally:
        proc.terminate()
        proc.wait(20)
    assert "Traceback" not in log_path.read_text(errors="replace")


def test_redis_restart_on_generic_kombu_path(private_redis: dict) -> None:
    url = private_redis["url"]
    app, _ = load_app(None, url)
    settings = Settings(evaluation_interval=1.0, probe_interval=1.0, event_consumer="kombu")
    pump = EventPump(url)
    with RunningExporter(app, settings) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        pump.start()
        try:
            wait_for(lambda: pumped(exporter) >= 5, message="pumped events counted")
            private_redis["kill"]()
            wait_for(lambda: exporter.get("/healthz")[0] == 503, timeout=15,
                     message="healthz 503")
            # the outage lasts: reconnect attempts fail for a while (blind time accrues)
            blind = exporter.total("flower_practices_event_stream_disconnected_seconds_total")
            wait_for(lambda: exporter.total(
                "flower_practices_event_stream_disconnected_seconds_total") >= blind + 3,
                timeout=30, message="3 s of counted blind time")
            frozen = pumped(exporter)
            private_redis["start"]()
            wait_for(lambda: exporter.get("/healthz")[0] == 200, timeout=60,
                     message="healthz 200 again")
            assert exporter.total("flower_practices_broker_reconnects_total") >= 1
            wait_for(lambda: pumped(exporter) >= frozen + 5, timeout=30,
                     message="counting again on the kombu path")
        finally:
            pump.stop()


# -- RabbitMQ ----------------------------------------------------------------------------
class PrivateRabbit:
    """A RabbitMQ node of our own: own node name, ports, config and data directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fp-rmq-"))
        self.port = free_port()
        self.node = f"fptest{os.getpid()}{self.port}@localhost"
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n")
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir()
        subprocess.run(["chmod", "-R", "777", str(self.dir)], check=False)
        self.env = {**os.environ, "RABBITMQ_NODENAME": self.node,
                    "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(free_port()),
                    "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
                    "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                    "RABBITMQ_PID_FILE": str(self.dir / "pid")}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(["rabbitmq-server"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while not reachable("127.0.0.1", self.port, 0.5):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("private RabbitMQ node did not start")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM (an abrupt broker crash)."""
        pidfile = self.dir / "pid"
        if pidfile.exists():
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        deadline = time.time() + 15
        while reachable("127.0.0.1", self.port, 0.2) and time.time() < deadline:
            time.sleep(0.2)
        pidfile.unlink(missing_ok=True)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def rabbit_broker() -> Iterator[dict]:
    """A killable private RabbitMQ node, else a vhost whose connections we may close."""
    from tests.support.brokers import delete_vhost, rabbitmq_vhost_url

    require("RabbitMQ", AMQP_HOST, AMQP_PORT)
    node = None
    if shutil.which("rabbitmq-server"):
        node = PrivateRabbit()
        try:
            node.start()
        except (OSError, RuntimeError):
            node.close()
            node = None
    if node is not None:
        yield {"url": node.url, "mode": "restart", "drop": node.kill, "restore": node.start}
        node.close()
        return
    if in_ci():
        pytest.fail("could not start a private RabbitMQ node (CI=true)")
    url = rabbitmq_vhost_url()
    vhost = url.rsplit("/", 1)[-1]

    def drop() -> None:
        subprocess.run(["rabbitmqctl", "close_all_connections", "--vhost", vhost,
                        "fp hardening test"], check=True, capture_output=True, timeout=60)

    yield {"url": url, "mode": "close_all_connections", "drop": drop, "restore": lambda: None}
    delete_vhost(url)


def test_rabbitmq_restart_mid_stream(rabbit_broker: dict) -> None:
    url = rabbit_broker["url"]
    producer = make_producer(url)
    app, _ = load_app(None, url)
    with RunningExporter(app) as exporter, \
            WorkerProcess("tests.apps.basic", url, queues="celery").start(producer):
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        for i in range(3):
            producer.send_task("basic.add", args=(i, i))
        wait_for(lambda: _basic_succeeded(exporter) == 3, message="3 tasks counted")

        rabbit_broker["drop"]()
        if rabbit_broker["mode"] == "restart":
            # the broker is gone: the exporter says so and keeps serving its state
            wait_for(lambda: exporter.get("/healthz")[0] == 503, timeout=60,
                     message="healthz 503 while RabbitMQ is down")
            assert exporter.total("flower_practices_event_stream_connected") == 0
            assert exporter.get("/metrics")[0] == 200
            assert _basic_succeeded(exporter) == 3
        rabbit_broker["restore"]()
        wait_for(lambda: exporter.total("flower_practices_broker_reconnects_total") >= 1,
                 timeout=60, message="reconnect counted")
        wait_for(lambda: exporter.get("/healthz")[0] == 200, timeout=60,
                 message="healthz 200 after the drop")
        assert _basic_succeeded(exporter) == 3  # state survived

        def send_and_count() -> bool:
            try:
                producer.send_task("basic.add", args=(1, 1))
            except Exception:  # the producer reconnects on its own schedule
                return False
            return _basic_succeeded(exporter) >= 5

        wait_for(send_and_count, timeout=90, interval=2.0,
                 message="tasks counted after the broker came back")


@pytest.fixture
def private_rabbit() -> Iterator[PrivateRabbit]:
    """A private RabbitMQ node we may freeze (the shared broker is never touched)."""
    require("RabbitMQ", AMQP_HOST, AMQP_PORT)
    if not shutil.which("rabbitmq-server"):
        if in_ci():
            pytest.fail("rabbitmq-server binary not found (CI=true)")
        pytest.skip("rabbitmq-server binary not found: cannot start a private node to freeze")
    node = PrivateRabbit()
    try:
        node.start()
    except (OSError, RuntimeError) as exc:
        node.close()
        if in_ci():
            pytest.fail(f"could not start a private RabbitMQ node (CI=true): {exc}")
        pytest.skip(f"could not start a private RabbitMQ node: {exc}")
    yield node
    node.close()


def _beam_pid(node: PrivateRabbit) -> int:
    pidfile = node.dir / "pid"
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(),
             timeout=30, message="the node's pid file")
    return int(pidfile.read_text().strip())


@pytest.mark.parametrize("consumer", ["auto", "kombu"], ids=["direct-amqp", "kombu"])
def test_frozen_rabbitmq_turns_healthz_503(private_rabbit: PrivateRabbit, consumer: str) -> None:
    """SIGSTOP leaves the TCP connection open and silent: only heartbeats can tell (on the
    direct AMQP consumer and on Celery's generic receiver)."""
    app, _ = load_app(None, private_rabbit.url)
    cfg = Settings(evaluation_interval=1.0, probe_interval=1.0, event_consumer=consumer)
    with RunningExporter(app, cfg) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, timeout=60,
                 message="healthz 200")
        pid = _beam_pid(private_rabbit)
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: exporter.get("/healthz")[0] == 503, timeout=30, interval=0.5,
                     message="healthz 503 within 30 s of freezing RabbitMQ")
            assert exporter.total("flower_practices_event_stream_gaps_total") == 1
            assert exporter.total("flower_practices_event_stream_connected") == 0
            assert exporter.get("/metrics")[0] == 200
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: exporter.get("/healthz")[0] == 200, timeout=10, interval=0.2,
                 message="healthz 200 within 10 s of SIGCONT")
        assert exporter.total("flower_practices_broker_reconnects_total") >= 1
        assert exporter.total("flower_practices_event_stream_disconnected_seconds_total") > 0


def test_frozen_redis_turns_healthz_503(private_redis: dict) -> None:
    """The direct Redis path PINGs a silent server and gives up on it after 15 s."""
    app, _ = load_app(None, private_redis["url"])
    with RunningExporter(app) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        proc = private_redis["proc"]
        proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: exporter.get("/healthz")[0] == 503, timeout=30, interval=0.5,
                     message="healthz 503 within 30 s of freezing Redis")
            assert exporter.total("flower_practices_event_stream_gaps_total") == 1
        finally:
            proc.send_signal(signal.SIGCONT)
        wait_for(lambda: exporter.get("/healthz")[0] == 200, timeout=10, interval=0.2,
                 message="healthz 200 within 10 s of SIGCONT")
        assert exporter.total("flower_practices_broker_reconnects_total") >= 1


def test_frozen_rabbitmq_under_flower_turns_healthz_503(private_rabbit: PrivateRabbit,
                                                         tmp_path: Path) -> None:
    """The plugin's stream (Flower's own Events thread) asks for heartbeats too."""
    from tests.test_flower_plugin_integration import FlowerProcess

    flower = FlowerProcess(private_rabbit.url, ["flower-practices"], tmp_path)
    try:
        wait_for(lambda: flower.get("/healthz")[0] == 200, timeout=60,
                 message=f"Flower's /healthz 200\n{flower.output()}")
        pid = _beam_pid(private_rabbit)
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: flower.get("/healthz")[0] == 503, timeout=30, interval=0.5,
                     message=f"503 within 30 s of freezing RabbitMQ\n{flower.output()}")
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: flower.get("/healthz")[0] == 200, timeout=10, interval=0.2,
                 message=f"200 within 10 s of SIGCONT\n{flower.output()}")
        assert "flower_practices_event_stream_gaps_total 1.0" in flower.get("/metrics")[1]
    finally:
        flower.stop()
