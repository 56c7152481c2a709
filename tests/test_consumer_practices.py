"""stalled_consumer and duplicate_delivery against real workers on the real Redis and
RabbitMQ.

stalled_consumer: a real zombie consumer -- one worker reaches Redis through
:class:`~tests.support.tcp_proxy.BlackholeProxy`, which half-opens only the connection
the worker sends ``BRPOP`` on: heartbeats and remote control keep working, consumption
is dead. It must not fire for a saturated worker, a queue nobody consumes
(``queue_without_consumer``'s finding) or a worker consuming normally under load.

stalled_consumer on RabbitMQ: the proxy blackholes the connection that sent
``basic.consume`` on ``celery``. RabbitMQ still counts the consumer and pushes it up to
its prefetch count (unacknowledged: not in the ready count the probe reads), so the queue
grows only past that; remote control shares the dead connection, so the worker lists the
queue it took tasks from. The same must-not-fire workload stays silent.

duplicate_delivery: Redis with ``visibility_timeout=3`` and a task with ``countdown=8``:
the reserved ETA message goes back to the queue after 3 s and is received again; so does
an ``acks_late`` task still running after 3 s (kombu's unacked restore runs every second
in tests/apps/redelivery.py; by default it sweeps about every 100 s). It must
not fire for retries with a countdown, an ETA shorter than the visibility timeout, or a
message restored by a worker's warm shutdown.

duplicate_delivery on RabbitMQ (a vhost of the test's own): no visibility timeout; the
broker requeues what a channel held unacknowledged when it closes. One worker reaches
RabbitMQ through the proxy, which cuts its consuming connection (the one that sent
``basic.consume`` on ``celery``) while it runs an ``acks_late`` task: the second worker
gets the message at once, the first reconnects (Celery restarts its consumer: worker-
offline, worker-online) and finishes its run too -- the task runs twice. The same
must-not-fire workload as on Redis stays silent.
"""

from __future__ import annotations

import time

import pytest
from celery import Celery

from flower_practices.config import Settings
from tests.apps.queues import make_app as queues_app
from tests.apps.redelivery import make_app as redelivery_app
from tests.support.exporter import RunningExporter, wait_for
from tests.support.tcp_proxy import AMQP_CONSUME_CELERY, BlackholeProxy
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

STALL = 6.0


def settings(**practices: dict) -> Settings:
    return Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                    practices=practices)


def total(exporter: RunningExporter, practice: str, **labels: str) -> float:
    return exporter.total("celery_practice_violations_total", practice=practice, **labels)


def gauge(exporter: RunningExporter, practice: str, **labels: str) -> float:
    return exporter.total("celery_practice_violation", practice=practice, **labels)


def finding(exporter: RunningExporter, practice: str, timeout: float = 60,
            **match: str | None) -> dict:
    def find() -> dict | None:
        for f in exporter.findings(practice):
            if all(f.get(k) == v for k, v in match.items()):
                return f
        return None

    return wait_for(find, timeout=timeout, message=f"{practice} finding {match}")


def events(exporter: RunningExporter, etype: str, task: str) -> float:
    return exporter.total("celery_task_events_total", type=etype, task=task)


def db_of(url: str) -> int:
    return int(url.rsplit("/", 1)[-1])


def queues_worker(broker: str, queues: str, tag: str, concurrency: int = 2) -> WorkerProcess:
    name = f"{tag}-{int(time.time() * 1000) % 100000}@fp-consumers"
    return WorkerProcess("tests.apps.queues", broker, queues=queues, name=name,
                         concurrency=concurrency)


def redis_len(url: str, queue: str) -> int:
    import redis
    return redis.Redis.from_url(url).llen(queue)


# -- stalled_consumer ---------------------------------------------------------------------
def test_stalled_consumer_fires_on_a_half_open_consuming_connection(redis_url: str) -> None:
    app = queues_app(redis_url)
    cfg = settings(stalled_consumer={"threshold_seconds": STALL})
    with BlackholeProxy("127.0.0.1", 6379) as proxy, \
            RunningExporter(app, cfg, app_loaded=True) as exporter:
        w = queues_worker(proxy.url(db_of(redis_url)), "celery", "zombie")
        try:
            w.start(app)
            app.send_task("queues.quick", args=[0])
            wait_for(lambda: events(exporter, "succeeded", "queues.quick") >= 1, timeout=30,
                     message="the worker consumes through the proxy")
            proxy.arm()
            wait_for(lambda: proxy.blackholed, timeout=15, message="BRPOP connection cut")
            for i in range(4):  # one a second: the probes see the queue grow
                app.send_task("queues.quick", args=[i])
                time.sleep(1.0)
            # the zombie for real: alive, listing the queue, the queue growing
            assert redis_len(redis_url, "celery") == 4
            assert app.control.ping(destination=[w.name], timeout=2)
            active = app.control.inspect(destination=[w.name], timeout=2).active_queues()
            assert [q["name"] for q in active[w.name]] == ["celery"]
            f = finding(exporter, "stalled_consumer", timeout=STALL + 30, queue="celery")
            app.send_task("queues.quick", args=[9])  # gains while stalled: counted
            wait_for(lambda: total(exporter, "stalled_consumer", queue="celery") >= 2,
                     timeout=20, message="growth counted")
        finally:
            w.stop()
        assert f["severity"] == "critical"
        ev = f["evidence"]
        assert ev["queue_length"] >= 1 and ev["queue_growth"] >= 1
        assert [s["worker"] for s in ev["stalled_workers"]] == [w.name] \
            == ev["listing_workers"]
        assert ev["stalled_workers"][0]["nothing_received_for_seconds"] >= STALL
        assert ev["stalled_workers"][0]["last_received_from_queue"] is not None
        assert ev["saturated_workers"] == []
        assert exporter.findings("queue_without_consumer") == []
        assert events(exporter, "received", "queues.quick") == 1  # nothing while stalled
        latest = finding(exporter, "stalled_consumer", queue="celery")
        assert latest["count"] == total(exporter, "stalled_consumer", queue="celery") >= 2
        assert gauge(exporter, "stalled_consumer", queue="celery") == 1


def queue_length(exporter: RunningExporter, queue: str) -> float:
    return exporter.total("celery_queue_length", queue=queue)


#: the zombie's prefetch count: concurrency 2 x worker_prefetch_multiplier 4
PREFETCH = 8


def test_stalled_consumer_fires_on_rabbitmq_past_the_zombies_prefetch(amqp_url: str) -> None:
    """The consuming AMQP connection blackholed: RabbitMQ still counts its consumer and
    pushes it up to its prefetch count (unacknowledged, so not in the queue's ready
    count); only the messages past that wait in the queue. Remote control shares the
    dead connection: the worker stops answering, its heartbeats (events connection) go
    on, and it lists the queue it took its last task from."""
    app = queues_app(amqp_url)
    cfg = settings(stalled_consumer={"threshold_seconds": STALL})
    with BlackholeProxy("127.0.0.1", 5672, trigger=AMQP_CONSUME_CELERY) as proxy, \
            RunningExporter(app, cfg, app_loaded=True) as exporter:
        w = queues_worker(proxy.amqp_url(amqp_url), "celery", "zombie")
        try:
            w.start(app)
            app.send_task("queues.quick", args=[0])
            wait_for(lambda: events(exporter, "succeeded", "queues.quick") >= 1, timeout=30,
                     message="the worker consumes through the proxy")
            wait_for(lambda: proxy.marked, timeout=15, message="consuming connection seen")
            assert proxy.blackhole_marked() == 1
            sent = 0
            found: list[dict] = []
            deadline = time.time() + PREFETCH + STALL + 60
            while not found and time.time() < deadline:
                # a trickle, one message a second: the probes see the queue grow
                app.send_task("queues.quick", args=[sent])
                sent += 1
                time.sleep(1.0)
                found = [x for x in exporter.findings("stalled_consumer")
                         if x["queue"] == "celery"]
            assert found, f"no stalled_consumer finding after {sent} messages"
            f = found[0]
            # the first PREFETCH went into the dead connection, unacknowledged
            assert sent > PREFETCH
            wait_for(lambda: queue_length(exporter, "celery") == sent - PREFETCH,
                     timeout=30, message=f"{sent - PREFETCH} ready messages: "
                     f"{queue_length(exporter, 'celery')}")
            assert exporter.total("celery_queue_consumers", queue="celery") == 1
            assert not app.control.ping(destination=[w.name], timeout=1.0)
            assert exporter.total("celery_worker_up", worker=w.name) == 1
            app.send_task("queues.quick", args=[99])  # gains while stalled: counted
            wait_for(lambda: total(exporter, "stalled_consumer", queue="celery")
                     >= f["count"] + 1, timeout=20, message="growth counted")
        finally:
            w.stop()
        assert f["severity"] == "critical"
        ev = f["evidence"]
        assert 1 <= ev["queue_length"] <= sent - PREFETCH and ev["queue_growth"] >= 1
        assert [s["worker"] for s in ev["stalled_workers"]] == [w.name] \
            == ev["listing_workers"]
        assert ev["stalled_workers"][0]["nothing_received_for_seconds"] >= STALL
        assert ev["stalled_workers"][0]["last_received_from_queue"] is not None
        assert exporter.findings("queue_without_consumer") == []
        assert events(exporter, "received", "queues.quick") == 1  # nothing while stalled
        assert gauge(exporter, "stalled_consumer", queue="celery") == 1


@pytest.mark.parametrize("broker", ["redis_url", "amqp_url"], ids=["redis", "rabbitmq"])
def test_stalled_consumer_silent_on_saturation_unconsumed_queue_and_load(
        broker: str, request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue(broker)  # (either broker's URL)
    app = queues_app(redis_url, routes=True)  # queues.slow -> bulk
    cfg = settings(stalled_consumer={"threshold_seconds": STALL},
                   queue_without_consumer={"grace_seconds": 2.0})
    with RunningExporter(app, cfg, app_loaded=True) as exporter:
        saturated = queues_worker(redis_url, "bulk", "saturated", concurrency=1)
        busy = queues_worker(redis_url, "load", "loaded", concurrency=2)
        saturated.start(app)
        busy.start(app)
        try:
            for _ in range(6):  # 1 running, 3 prefetched, the rest waiting in the queue
                app.send_task("queues.slow", args=[8.0], queue="bulk")
            wait_for(lambda: events(exporter, "started", "queues.slow") >= 1, timeout=30,
                     message="saturated worker busy")
            start = time.time()
            n = 0
            while time.time() - start < STALL * 2.5:  # load, and a growing bulk queue
                app.send_task("queues.quick", args=[n], queue="load")
                if n % 10 == 0:
                    app.send_task("queues.slow", args=[8.0], queue="bulk")
                    app.send_task("queues.quick", args=[n], queue="nobody")
                n += 1
                time.sleep(0.2)
            finding(exporter, "queue_without_consumer", queue="nobody")
            assert queue_length(exporter, "bulk") >= 3
            exporter.wait_evaluated(rounds=3)
            assert events(exporter, "succeeded", "queues.quick") >= n // 2
        finally:
            saturated.kill()
            busy.stop()
        assert exporter.findings("stalled_consumer") == []
        assert total(exporter, "stalled_consumer") == 0
        assert gauge(exporter, "stalled_consumer") == 0


# -- duplicate_delivery -------------------------------------------------------------------
def redelivery_worker(broker: str, tag: str, vt: float) -> WorkerProcess:
    name = f"{tag}-{int(time.time() * 1000) % 100000}@fp-redelivery"
    return WorkerProcess("tests.apps.redelivery", broker, name=name, concurrency=2,
                         env={"FP_VISIBILITY_TIMEOUT": str(vt)})


def test_duplicate_delivery_fires_when_eta_outlives_the_visibility_timeout(
        redis_url: str) -> None:
    app: Celery = redelivery_app(redis_url, visibility_timeout=3.0)
    cfg = settings(duplicate_delivery={"grace_seconds": 2.0})
    with RunningExporter(app, cfg, app_loaded=True) as exporter:
        workers = [redelivery_worker(redis_url, f"d{i}", 3.0) for i in range(2)]
        try:
            for w in workers:
                w.start(app)
            result = app.send_task("redelivery.later", args=[1], countdown=8)
            f = finding(exporter, "duplicate_delivery", timeout=60, task="redelivery.later")
            wait_for(lambda: events(exporter, "succeeded", "redelivery.later") >= 2,
                     timeout=30, message="the duplicated task ran twice")
            # every delivery judged while its worker is up (a worker that goes offline
            # within grace_seconds of a redelivery excuses it: a warm shutdown's restore)
            exporter.wait_evaluated(since=time.time() + 2.5)
        finally:
            for w in workers:
                w.stop()
        assert f["severity"] == "warning" and f["queue"] == "celery"
        ev = f["evidence"]
        assert result.id in ev["task_ids"]
        assert ev["visibility_timeout"] == 3.0
        assert ev["visibility_timeout_source"] == "broker_transport_options"
        # the ETA outlived the visibility timeout (8 s after sending, from the first
        # delivery judged: the first, or on a busy box a later one, 3 s further on)
        assert ev["visibility_timeout"] < ev["eta_delay_seconds_max"] <= 9.0
        assert 2.0 <= ev["seconds_between_deliveries_min"] <= 8.0
        received = events(exporter, "received", "redelivery.later")
        assert received >= 2
        latest = finding(exporter, "duplicate_delivery", task="redelivery.later")
        assert latest["count"] == received - 1 \
            == total(exporter, "duplicate_delivery", task="redelivery.later")
        assert gauge(exporter, "duplicate_delivery", task="redelivery.later") == 1


def test_duplicate_delivery_fires_when_an_acks_late_run_outlives_the_visibility_timeout(
        redis_url: str) -> None:
    app: Celery = redelivery_app(redis_url, visibility_timeout=3.0)
    cfg = settings(duplicate_delivery={"grace_seconds": 2.0})
    with RunningExporter(app, cfg, app_loaded=True) as exporter:
        workers = [redelivery_worker(redis_url, f"a{i}", 3.0) for i in range(2)]
        try:
            for w in workers:
                w.start(app)
            result = app.send_task("redelivery.acks_late", args=[7.0])
            f = finding(exporter, "duplicate_delivery", timeout=60, task="redelivery.acks_late")
            wait_for(lambda: events(exporter, "succeeded", "redelivery.acks_late") >= 2,
                     timeout=40, message="the redelivered run finished too")
        finally:
            for w in workers:
                w.stop()
        ev = f["evidence"]
        assert result.id in ev["task_ids"] and ev["eta_delay_seconds_max"] is None
        assert ev["runtime_at_redelivery_seconds_max"] >= 2.0
        assert ev["visibility_timeout"] == 3.0
        assert "a run longer" in f["summary"]


def test_duplicate_delivery_fires_on_rabbitmq_when_a_connection_drops_mid_run(
        amqp_url: str) -> None:
    app: Celery = redelivery_app(amqp_url)
    cfg = settings(duplicate_delivery={"grace_seconds": 2.0})
    with BlackholeProxy("127.0.0.1", 5672, trigger=AMQP_CONSUME_CELERY) as proxy, \
            RunningExporter(app, cfg, app_loaded=True) as exporter:
        first = redelivery_worker(proxy.amqp_url(amqp_url), "cut", 3.0)
        second = redelivery_worker(amqp_url, "other", 3.0)
        try:
            first.start(app)
            result = app.send_task("redelivery.acks_late", args=[10.0])
            wait_for(lambda: events(exporter, "started", "redelivery.acks_late") >= 1,
                     timeout=30, message="the first worker runs the task")
            second.start(app)
            wait_for(lambda: proxy.marked, timeout=15, message="consuming connection seen")
            assert proxy.cut() == 1  # the network drops the first worker's connection
            wait_for(lambda: events(exporter, "received", "redelivery.acks_late") >= 2,
                     timeout=30, message="the requeued message delivered again")
            wait_for(lambda: events(exporter, "succeeded", "redelivery.acks_late") >= 2,
                     timeout=60, message="both runs finished")
            f = finding(exporter, "duplicate_delivery", timeout=30,
                        task="redelivery.acks_late")
            # the first worker stayed up all along
            assert first.proc is not None and first.proc.poll() is None
            assert exporter.total("celery_worker_up", worker=first.name) == 1
        finally:
            first.stop()
            second.stop()
        assert "Connection to broker lost" in first.log()
        ev = f["evidence"]
        assert result.id in ev["task_ids"] and ev["transport"] == "amqp"
        assert ev["first_workers"] == [first.name]
        assert "visibility_timeout" not in ev
        assert "connection" in f["summary"]
        assert f["count"] == 1 == total(exporter, "duplicate_delivery",
                                        task="redelivery.acks_late")


@pytest.mark.parametrize("broker", ["redis_url", "amqp_url"], ids=["redis", "rabbitmq"])
def test_duplicate_delivery_silent_on_retries_short_eta_and_warm_shutdown(
        broker: str, request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue(broker)  # (either broker's URL)
    vt = 20.0
    app: Celery = redelivery_app(redis_url, visibility_timeout=vt)
    cfg = settings(duplicate_delivery={"grace_seconds": 2.0})
    with RunningExporter(app, cfg, app_loaded=True) as exporter:
        first = redelivery_worker(redis_url, "first", vt)
        second = redelivery_worker(redis_url, "second", vt)
        first.start(app)
        try:
            app.send_task("redelivery.flaky", args=[1])          # two retries, countdown 1
            app.send_task("redelivery.later", args=[1], countdown=2)   # ETA < visibility
            wait_for(lambda: events(exporter, "succeeded", "redelivery.flaky") >= 1
                     and events(exporter, "succeeded", "redelivery.later") >= 1,
                     timeout=40, message="retried and ETA tasks done")
            assert events(exporter, "retried", "redelivery.flaky") == 2
            assert events(exporter, "received", "redelivery.flaky") == 3
            assert events(exporter, "received", "redelivery.later") == 1
            moved = app.send_task("redelivery.sleepy", args=[0], countdown=12)
            wait_for(lambda: events(exporter, "received", "redelivery.sleepy") >= 1,
                     timeout=30, message="ETA task reserved by the first worker")
            second.start(app)
            first.stop()  # warm shutdown: its unacked ETA message goes back to the queue
            wait_for(lambda: events(exporter, "received", "redelivery.sleepy") >= 2,
                     timeout=30, message="restored message received by the second worker")
            wait_for(lambda: events(exporter, "succeeded", "redelivery.sleepy") >= 1,
                     timeout=40, message="restored task done")
            exporter.wait_evaluated(since=time.time() + 2.5, rounds=3)
        finally:
            first.stop()
            second.stop()
        assert moved.id
        assert exporter.findings("duplicate_delivery") == []
        assert total(exporter, "duplicate_delivery") == 0
        assert gauge(exporter, "duplicate_delivery") == 0
