"""Queue and worker practices against real workers on the real Redis and RabbitMQ.

Each rule's finding is shown in ``/api/practices`` and as ``celery_practice_violation``
in ``/metrics`` on a workload that breaks the practice; a well-behaved workload (several
queues each with its own worker, sent events on, prefetch 1 with acks_late) raises none.
The database rules run the real exporter against database broker/backend URLs. Tests
parametrized over ``broker`` run the same workload on Redis and on RabbitMQ (a vhost of
their own): queue lengths then come from AMQP, consumers from RabbitMQ's count.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from celery import Celery

from flower_practices.config import Settings
from tests.apps.queues import make_app
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

QUEUE_RULES = ("database_broker", "result_backend_database", "single_default_queue",
               "queue_without_consumer", "queue_starvation", "events_disabled",
               "prefetch_starvation")

OPTIONS = {
    "single_default_queue": {"min_tasks": 2},
    "queue_without_consumer": {"grace_seconds": 2.0, "clear_after_seconds": 2.0},
    "queue_starvation": {"max_wait_seconds": 3.0, "min_samples": 1},
    # the broker starts empty: no backlog to wait out before judging task-received events
    "events_disabled": {"min_processed": 3, "min_received": 3, "warmup_seconds": 0.0},
    "prefetch_starvation": {"min_wait_seconds": 1.5},
}

#: the longest of the time thresholds above
LONGEST_THRESHOLD = max(v for o in OPTIONS.values() for k, v in o.items()
                        if k.endswith("_seconds") and k != "clear_after_seconds")


def settings(**over: dict) -> Settings:
    practices = {k: dict(v) for k, v in OPTIONS.items()}
    practices.update(over)
    return Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                    practices=practices)


def worker(broker: str, queues: str, tag: str, *, events: bool = True, concurrency: int = 1,
           env: dict[str, str] | None = None) -> WorkerProcess:
    name = f"{tag}-{int(time.time() * 1000) % 100000}@fp-queues"
    return WorkerProcess("tests.apps.queues", broker, queues=queues, name=name, events=events,
                         concurrency=concurrency, env=env)


@contextmanager
def running(app: Celery, cfg: Settings | None = None) -> Iterator[RunningExporter]:
    with RunningExporter(app, cfg or settings(), app_loaded=True) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        yield exporter


@contextmanager
def workers(app: Celery, *procs: WorkerProcess) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    try:
        for p in procs:
            started.append(p.start(app))
        yield started
    finally:
        for p in started:
            p.stop()


def finding(exporter: RunningExporter, practice: str, timeout: float = 45,
            **match: str | None) -> dict:
    def find() -> dict | None:
        for f in exporter.findings(practice):
            if all(f.get(k) == v for k, v in match.items()):
                return f
        return None

    return wait_for(find, timeout=timeout, message=f"{practice} finding {match}")


def gauge(exporter: RunningExporter, practice: str, **labels: str) -> float:
    return exporter.total("celery_practice_violation", practice=practice, **labels)


def total(exporter: RunningExporter, practice: str, **labels: str) -> float:
    return exporter.total("celery_practice_violations_total", practice=practice, **labels)


def done(exporter: RunningExporter, task: str, n: int, timeout: float = 45) -> None:
    wait_for(lambda: exporter.total("celery_task_events_total", type="succeeded",
                                    task=task) >= n, timeout=timeout,
             message=f"{n} {task} succeeded")


# -- database_broker / result_backend_database ---------------------------------------------
def test_database_broker_and_backend_reported_at_startup() -> None:
    app = make_app("sqla+postgresql://127.0.0.1:5432/test",
                   backend="db+postgresql://127.0.0.1:5432/test")
    with RunningExporter(app, settings(), app_loaded=True) as exporter:
        status, body = exporter.get("/healthz")
        assert status == 503
        assert "database" in json.loads(body)["reason"]
        f = finding(exporter, "database_broker")
        assert f["severity"] == "critical"
        assert f["evidence"]["transport"] == "sqla"
        assert f["evidence"]["events_can_flow"] is False
        assert f["evidence"]["exporter_receives_events"] is False
        # -A proj without --broker: the URL is the app's, not an exporter option
        assert f["evidence"]["source"] == "app configuration (broker_url)"
        assert "cannot carry Celery events" in f["summary"]
        r = finding(exporter, "result_backend_database")
        assert r["severity"] == "info" and r["evidence"]["backend"] == "db"
        # all three tasks of the app ignore their results (shared tasks other test apps
        # registered in this process may not)
        assert not [t for t in r["evidence"]["tasks_storing_results_sample"]
                    if t.startswith("queues.")]
        assert gauge(exporter, "database_broker") == 1
        assert gauge(exporter, "result_backend_database") == 1
        assert total(exporter, "database_broker") == 1 == f["count"]
        coverage = exporter.practices()["coverage"]
        assert coverage["database_broker"] == "active"
        assert coverage["result_backend_database"] == "active"
        for rid in ("queue_without_consumer", "queue_starvation", "events_disabled",
                    "prefetch_starvation", "retryless_failure", "retry_storm",
                    "orm_object_argument", "missing_time_limit", "lost_task",
                    "single_default_queue"):
            assert coverage[rid].startswith("unsupported: the broker is a database"), rid
        assert "127.0.0.1:5432" not in json.dumps(exporter.practices())


@pytest.mark.parametrize("broker", ["redis_url", "amqp_url"], ids=["redis", "rabbitmq"])
def test_database_backend_with_a_real_broker(broker: str,
                                             request: pytest.FixtureRequest) -> None:
    """The exporter on a real Redis or RabbitMQ broker, results configured into
    PostgreSQL."""
    app = make_app(request.getfixturevalue(broker), backend="db+postgresql://127.0.0.1/test")
    with running(app) as exporter:
        r = finding(exporter, "result_backend_database")
        assert r["evidence"]["source"] == ["result backend URL", "app config"]
        assert not exporter.findings("database_broker")
        assert gauge(exporter, "database_broker") == 0
        assert exporter.practices()["coverage"]["queue_starvation"] == "active"


@pytest.mark.parametrize("broker", ["redis_url", "amqp_url"], ids=["redis", "rabbitmq"])
def test_real_broker_and_redis_backend_raise_no_database_findings(
        broker: str, redis_url: str, request: pytest.FixtureRequest) -> None:
    app = make_app(request.getfixturevalue(broker), backend=redis_url)
    with running(app) as exporter:
        exporter.wait_evaluated()  # evaluations that judged the app's configuration
        for rid in ("database_broker", "result_backend_database"):
            assert exporter.findings(rid) == []
            assert gauge(exporter, rid) == 0 and total(exporter, rid) == 0


# -- single_default_queue + events_disabled (client side) -----------------------------------
@pytest.mark.parametrize("broker", ["redis_url", "amqp_url"], ids=["redis", "rabbitmq"])
def test_single_default_queue_and_sent_events_off(broker: str,
                                                 request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue(broker)  # (either broker's URL)
    producer = make_app(redis_url, sent_events=False)
    with running(producer) as exporter, workers(producer, worker(
            redis_url, "celery", "default", env={"FP_SENT_EVENTS": "0"})):
        for i in range(3):
            producer.send_task("queues.quick", args=(i,))
            producer.send_task("queues.report", args=(i,))
        done(exporter, "queues.report", 3)
        f = finding(exporter, "single_default_queue", queue="celery")
        ev = f["evidence"]
        assert ev["tasks"] == ["queues.quick", "queues.report"]
        assert ev["queue_source"] == "workers' active_queues"  # no task-sent events
        assert ev["source"] == "app config" and ev["task_routes_set"] is False
        assert "task_routes is not set" in f["summary"]
        assert gauge(exporter, "single_default_queue", queue="celery") == 1
        wait_for(lambda: total(exporter, "single_default_queue", queue="celery") == 6,
                 message="6 messages counted")
        # client side sent events off: task-received with no task-sent ever
        for task in ("queues.quick", "queues.report"):
            e = finding(exporter, "events_disabled", task=task)
            assert e["evidence"]["received_without_sent"] == 3
            assert e["evidence"]["send_sent_event"] is False
            assert "task_send_sent_event" in e["summary"]
            assert gauge(exporter, "events_disabled", task=task) == 1
            assert total(exporter, "events_disabled", task=task) == 3


# -- events_disabled (worker side) ------------------------------------------------------------
@pytest.mark.parametrize("broker", ["redis_url", "amqp_url"], ids=["redis", "rabbitmq"])
def test_worker_without_task_events(broker: str, request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue(broker)  # (either broker's URL)
    producer = make_app(redis_url)
    blind = worker(redis_url, "celery", "blind", events=False)
    with running(producer) as exporter, workers(producer, blind):
        wait_for(lambda: exporter.total("celery_worker_up", worker=blind.name) == 1,
                 message="heartbeats from the worker")
        for i in range(5):
            producer.send_task("queues.quick", args=(i,))
        f = finding(exporter, "events_disabled", worker=blind.name)
        assert f["evidence"]["processed_without_task_events"] >= 3
        assert f["evidence"]["task_events_from_worker"] == 0
        assert "-E" in f["summary"]
        assert gauge(exporter, "events_disabled", worker=blind.name) == 1
        assert total(exporter, "events_disabled") >= 3
        assert exporter.total("celery_task_events_total", type="started") == 0


# -- queue_without_consumer (Redis: workers' active_queues), and clearing ---------------------
def test_queue_without_consumer_on_redis_clears_once_consumed(redis_url: str) -> None:
    producer = make_app(redis_url)
    with running(producer) as exporter, workers(producer, worker(redis_url, "celery", "main")):
        for i in range(3):
            producer.send_task("queues.quick", args=(i,), queue="orphan")
        producer.send_task("queues.quick", args=(9,))  # the consumed queue: no finding
        f = finding(exporter, "queue_without_consumer", queue="orphan")
        ev = f["evidence"]
        assert ev["consumers"] == 0
        assert ev["consumers_source"] == "workers' active_queues and the tasks they took"
        assert ev["workers_not_answering"] == []
        assert ev["messages_waiting"] == 3 and ev["queues_consumed_by_workers"] == ["celery"]
        assert f["severity"] == "critical"
        assert gauge(exporter, "queue_without_consumer", queue="orphan") == 1
        # count: the 3 messages that entered the unconsumed queue, as in its series
        assert f["count"] == total(exporter, "queue_without_consumer", queue="orphan") == 3
        assert not [s for s in exporter.findings("queue_starvation") if s["queue"] == "orphan"]
        assert not exporter.findings("queue_without_consumer")[1:]  # not 'celery'
        # A consumer arrives: the queue drains and the finding clears after 2 s.
        with workers(producer, worker(redis_url, "orphan", "late")):
            done(exporter, "queues.quick", 4)
            wait_for(lambda: not exporter.findings("queue_without_consumer"), timeout=30,
                     message="finding cleared")
            assert gauge(exporter, "queue_without_consumer", queue="orphan") == 0


# -- queue_without_consumer (RabbitMQ: broker consumer counts) --------------------------------
def test_queue_without_consumer_on_rabbitmq(amqp_url: str) -> None:
    producer = make_app(amqp_url)
    with running(producer) as exporter, workers(producer, worker(amqp_url, "celery,busy",
                                                                 "main")):
        for i in range(2):
            producer.send_task("queues.quick", args=(i,), queue="orphan")
            producer.send_task("queues.quick", args=(i,), queue="busy")
        f = finding(exporter, "queue_without_consumer", queue="orphan")
        assert f["evidence"]["consumers_source"] == "rabbitmq consumer count"
        assert f["evidence"]["messages_waiting"] == 2
        assert gauge(exporter, "queue_without_consumer", queue="orphan") == 1
        done(exporter, "queues.quick", 2)
        # judged past grace_seconds for the consumed queues
        exporter.wait_evaluated(since=time.time() + OPTIONS["queue_without_consumer"]
                                ["grace_seconds"])
        assert [x["queue"] for x in exporter.findings("queue_without_consumer")] == ["orphan"]
        with workers(producer, worker(amqp_url, "orphan", "late")):
            wait_for(lambda: not exporter.findings("queue_without_consumer"), timeout=30,
                     message="finding cleared")


# -- queue_starvation with priority inversion -------------------------------------------------
def test_queue_starvation_names_the_occupying_queue(redis_url: str) -> None:
    producer = make_app(redis_url)
    shared = worker(redis_url, "high,bulk", "shared")
    with running(producer) as exporter, workers(producer, shared):
        for _ in range(3):
            producer.send_task("queues.slow", args=(2.0,), queue="bulk")
        # the worker is busy with (and has prefetched) bulk work before 'high' gets a task
        wait_for(lambda: exporter.total("celery_task_events_total", type="started",
                                        task="queues.slow") >= 1,
                 message="a bulk task started on the shared worker")
        producer.send_task("queues.quick", args=(1,), queue="high")
        finding(exporter, "queue_starvation", queue="high")
        # which workers share the queue comes from the worker probe (active_queues): the
        # finding may be raised before the first probe that sees the worker answers
        wait_for(lambda: finding(exporter, "queue_starvation", queue="high")["evidence"]
                 ["shared_workers"] == [shared.name],
                 message="the evidence names the shared worker once it was probed")
        f = finding(exporter, "queue_starvation", queue="high")
        ev = f["evidence"]
        assert ev["shared_workers"] == [shared.name]
        assert ev["occupied_by"][0]["queue"] == "bulk"
        assert "priority inversion" in f["summary"] and "'bulk'" in f["summary"]
        assert gauge(exporter, "queue_starvation", queue="high") == 1
        done(exporter, "queues.quick", 1, timeout=30)
        wait_for(lambda: (finding(exporter, "queue_starvation", queue="high")["evidence"]
                          ["wait_p95_seconds"] or 0) > 3.0, message="p95 wait over 3 s")
        assert total(exporter, "queue_starvation", queue="high") == 1


# -- prefetch_starvation ----------------------------------------------------------------------
@pytest.mark.parametrize("broker", ["redis_url", "amqp_url"], ids=["redis", "rabbitmq"])
def test_prefetch_starvation_reserved_on_busy_worker(broker: str,
                                                    request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue(broker)  # (either broker's URL)
    producer = make_app(redis_url)
    greedy = worker(redis_url, "work", "greedy")  # prefetch multiplier 4, concurrency 1
    with running(producer) as exporter, workers(producer, greedy):
        for _ in range(4):
            producer.send_task("queues.slow", args=(3.0,), queue="work")
        wait_for(lambda: exporter.total("celery_worker_tasks_reserved",
                                        worker=greedy.name) == 3,
                 message="3 tasks reserved on the greedy worker")
        idle = worker(redis_url, "work", "idle")
        with workers(producer, idle):
            f = finding(exporter, "prefetch_starvation", queue="work", worker=greedy.name)
            ev = f["evidence"]
            assert ev["idle_workers"] == [idle.name]
            assert ev["reserved_waiting"] >= 1
            assert ev["busy_worker_concurrency"] == 1
            assert ev["busy_worker_prefetch_count"] == 4
            assert ev["prefetch_multiplier"] == 4
            assert gauge(exporter, "prefetch_starvation", queue="work") == 1
            assert total(exporter, "prefetch_starvation", queue="work") >= 1


# -- the well-behaved counterpart -------------------------------------------------------------
@pytest.mark.parametrize("broker", ["redis_url", "amqp_url"], ids=["redis", "rabbitmq"])
def test_well_behaved_queues_raise_no_queue_findings(broker: str,
                                                     request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue(broker)  # (either broker's URL)
    env = {"FP_PREFETCH": "1", "FP_ACKS_LATE": "1", "FP_ROUTES": "1"}
    producer = make_app(redis_url, prefetch=1, acks_late=True, routes=True)
    procs = [worker(redis_url, "celery", "main", env=env),
             worker(redis_url, "bulk", "bulk1", env=env),
             worker(redis_url, "bulk", "bulk2", env=env)]
    with running(producer) as exporter, workers(producer, *procs):
        for i in range(4):
            producer.send_task("queues.quick", args=(i,))
            producer.send_task("queues.report", args=(i,))
        for _ in range(4):
            producer.send_task("queues.slow", args=(0.5,))  # routed to 'bulk'
        done(exporter, "queues.slow", 4)
        done(exporter, "queues.report", 4)
        # judged past every short threshold: a wrong finding would show now
        exporter.wait_evaluated(since=time.time() + LONGEST_THRESHOLD)
        assert exporter.total("celery_task_events_total", type="sent") == 12
        payload = exporter.practices()
        assert all(payload["coverage"][rid] == "active" for rid in QUEUE_RULES)
        wrong = [f for f in payload["findings"] if f["practice"] in QUEUE_RULES]
        assert wrong == []
        for rid in QUEUE_RULES:
            assert gauge(exporter, rid) == 0 and total(exporter, rid) == 0, rid


# -- configuration ----------------------------------------------------------------------------
def test_thresholds_come_from_the_toml_file(tmp_path) -> None:
    from flower_practices.config import ConfigError, load_settings
    from flower_practices.engine import Engine

    path = tmp_path / "fp.toml"
    path.write_text("[practices.queue_starvation]\nmax_wait_seconds = 10\nwindow_seconds = 60\n"
                    "[practices.prefetch_starvation]\nmin_wait_seconds = 5\n"
                    "[practices.single_default_queue]\ndefault_queue = \"default\"\n")
    engine = Engine(load_settings(path), broker_url="redis://127.0.0.1:6379/0")
    rules = {r.id: r for r in engine.rules}
    assert rules["queue_starvation"].max_wait == 10.0
    assert rules["queue_starvation"].options["min_samples"] == 5  # documented default
    assert rules["prefetch_starvation"].options["min_wait_seconds"] == 5
    assert rules["single_default_queue"].default_queue() == ("default", "default")
    assert rules["queue_without_consumer"].options["grace_seconds"] == 60.0
    path.write_text("[practices.queue_without_consumer]\ngrace = 5\n")
    with pytest.raises(ConfigError, match="unknown key 'grace'"):
        Engine(load_settings(path))
