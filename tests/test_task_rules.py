"""Task-level practices against real workers on the real Redis and the real RabbitMQ.

Two environments, each with its own Redis database, real ``celery worker`` subprocesses
and the real exporter (app loaded): a *bad* app that breaks the practices and a *good*
app (routed queues, retries with back-off, time limits, ignore_result, primary keys).
Each rule gets a test showing its finding in /api/practices and /metrics on the bad
app, and a counterpart showing the good app's equivalent workload raises none.

The bad environment runs twice: on Redis (broker and result backend), and on RabbitMQ
(a vhost of its own) with results in Redis -- the usual pairing, and the one
``unread_results`` can judge (it reads Redis key metadata; with ``rpc://`` it says it is
unsupported, checked at the end). The good app's silence on RabbitMQ is
tests/test_well_behaved_workload.py's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from celery import Celery

from flower_practices.config import Settings
from tests.apps import bad_tasks, good_tasks
from tests.apps.models import Invoice, Order, User
from tests.support.brokers import (
    delete_vhost,
    fresh_redis_url,
    rabbitmq_vhost_url,
    release_redis_dbs,
)
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

OPTIONS = {
    "retry_storm": {"max_retries_per_window": 10, "window_seconds": 120.0},
    # six instant tasks are too few to rule out callers waiting on them over pub/sub (the
    # default min_unread_evidence, tested in tests/test_unread_results_pubsub.py)
    "unread_results": {"grace_seconds": 6.0, "min_samples": 5, "tolerance_seconds": 1.0,
                       "min_unread_evidence": 0.01},
    "missing_time_limit": {"max_runtime_seconds": 1.0},
    "lost_task": {"grace_seconds": 0.0},
}


#: Celery's liveness rule with the workers' default heartbeat frequency (2 x 2 s)
HEARTBEAT_EXPIRY_SECONDS = 4.0

#: the bad app accepts pickle; Celery refuses that as root unless forced (test containers)
PICKLE_AS_ROOT = {"C_FORCE_ROOT": "1"}


def settings() -> Settings:
    return Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                    practices={k: dict(v) for k, v in OPTIONS.items()})


@dataclass
class Env:
    broker: str
    app: Celery
    exporter: RunningExporter
    workers: list[WorkerProcess]
    #: the workers' environment (result backend, pickle as root)
    worker_env: dict[str, str] | None = None

    def finding(self, practice: str, task: str, **match: str) -> dict:
        def find() -> dict | None:
            for f in self.exporter.findings(practice):
                if f["task"] == task and all(f.get(k) == v for k, v in match.items()):
                    return f
            return None

        return wait_for(find, timeout=45, message=f"{practice} finding for {task}")

    def gauge(self, practice: str, task: str) -> float:
        return self.exporter.total("celery_practice_violation", practice=practice, task=task)

    def total(self, practice: str, task: str) -> float:
        return self.exporter.total("celery_practice_violations_total", practice=practice,
                                   task=task)

    def events(self, etype: str, task: str) -> float:
        return self.exporter.total("celery_task_events_total", type=etype, task=task)

    def wait_events(self, etype: str, task: str, n: int) -> None:
        wait_for(lambda: self.events(etype, task) >= n, timeout=45,
                 message=f"{n} {etype} events for {task}")

    def settle(self, threshold: float = 0.0) -> None:
        """Wait for two evaluations that started ``threshold`` seconds from now or later:
        the workload's events (already counted) were judged, past the rule's threshold, so
        a wrong finding would have appeared."""
        self.exporter.wait_evaluated(since=time.time() + threshold)


def _env(module, queues: list[str], env: dict[str, str] | None = None,
         broker_kind: str = "redis") -> Iterator[Env]:
    backend = broker = fresh_redis_url()
    workers: list[WorkerProcess] = []
    try:
        if broker_kind == "rabbitmq":
            broker = rabbitmq_vhost_url()
        env = {**(env or {}), "FP_TEST_BACKEND": backend}
        app = module.make_app(broker, backend)
        with RunningExporter(app, settings(), app_loaded=True) as exporter:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            for q in queues:
                workers.append(WorkerProcess(f"tests.apps.{module.__name__.rsplit('.', 1)[1]}",
                                             broker, queues=q, name=f"{q}-{module.__name__[12:16]}"
                                             f"{int(time.time() * 1000) % 100000}@fp-test", env=env)
                               .start(app))
            yield Env(broker, app, exporter, workers, env)
            for w in workers:
                w.stop()
    finally:
        for w in workers:
            w.kill()
        release_redis_dbs(backend)
        if broker != backend:
            delete_vhost(broker)


@pytest.fixture(scope="module", params=[
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", marks=[pytest.mark.redis, pytest.mark.rabbitmq]),
])
def bad(request: pytest.FixtureRequest) -> Iterator[Env]:
    yield from _env(bad_tasks, ["celery"], PICKLE_AS_ROOT, broker_kind=request.param)


@pytest.fixture(scope="module")
def good() -> Iterator[Env]:
    yield from _env(good_tasks, list(good_tasks.QUEUES))


def no_finding(env: Env, practice: str, prefix: str = "good.") -> None:
    found = [f for f in env.exporter.findings(practice) if (f["task"] or "").startswith(prefix)]
    assert found == [], found
    assert env.exporter.total("celery_practice_violations_total", practice=practice) == 0


# -- retryless_failure ------------------------------------------------------------------------
def test_retryless_failure_found(bad: Env) -> None:
    for i in range(3):
        bad.app.send_task("bad.fetch", args=(i,))
    for i in range(2):
        bad.app.send_task("bad.parse", args=(i,))
    f = bad.finding("retryless_failure", "bad.fetch")
    bad.wait_events("failed", "bad.parse", 2)
    wait_for(lambda: bad.total("retryless_failure", "bad.fetch") == 3, message="3 counted")
    f = bad.finding("retryless_failure", "bad.fetch")
    assert f["evidence"]["exception_classes"] == {"ConnectionError": 3}
    assert f["evidence"]["failures_without_retry"] == 3
    assert f["evidence"]["retry_policy"].startswith("none")
    assert "no retry policy" in f["summary"]
    assert f["queue"] == "celery" and f["severity"] == "warning"
    assert bad.gauge("retryless_failure", "bad.fetch") == 1
    # ValueError is not transient: no finding, nothing counted.
    assert not [x for x in bad.exporter.findings("retryless_failure") if x["task"] == "bad.parse"]
    assert bad.total("retryless_failure", "bad.parse") == 0
    assert "refused" not in json.dumps(bad.exporter.practices())  # never the message


def test_retries_with_backoff_raise_no_retryless_failure(good: Env) -> None:
    retried, succeeded = good.events("retried", "good.fetch"), good.events("succeeded",
                                                                            "good.fetch")
    for i in range(3):
        good.app.send_task("good.fetch", args=(i,))
    good.wait_events("succeeded", "good.fetch", succeeded + 3)
    # each good.fetch fails twice with ConnectionError and retries with back-off
    assert good.events("retried", "good.fetch") == retried + 6
    good.settle()
    no_finding(good, "retryless_failure")


# -- retry_storm ------------------------------------------------------------------------------
def test_retry_storm_found(bad: Env) -> None:
    for _ in range(2):
        bad.app.send_task("bad.hammer")
    f = bad.finding("retry_storm", "bad.hammer")
    bad.wait_events("failed", "bad.hammer", 2)
    seen: list[dict] = []

    def all_retries_in() -> bool:
        seen.append(bad.finding("retry_storm", "bad.hammer")["evidence"])
        return seen[-1]["zero_delay_retries"] == 16 and seen[-1]["retries_in_window"] == 16

    try:
        wait_for(all_retries_in, timeout=60, message="16 retries, all with zero delay")
    except AssertionError as exc:
        others = [(f["task"], f["queue"], f["evidence"]["retries_in_window"])
                  for f in bad.exporter.findings("retry_storm")]
        raise AssertionError(
            f"{exc}; last evidence: {seen[-1] if seen else None}; all retry_storm findings:"
            f" {others}; retried events: {bad.events('retried', 'bad.hammer')}") from None
    f = bad.finding("retry_storm", "bad.hammer")
    assert f["evidence"]["retries_in_window"] == 16
    assert f["evidence"]["delayed_retries"] == 0
    assert "limit 10" in f["summary"] and "no back-off" in f["summary"]
    assert "retry_backoff is not set" in f["summary"]
    assert bad.gauge("retry_storm", "bad.hammer") == 1
    assert bad.total("retry_storm", "bad.hammer") >= 16
    # Retried tasks that finally failed are not retry-less failures.
    assert not [x for x in bad.exporter.findings("retryless_failure")
                if x["task"] == "bad.hammer"]


def test_backoff_retries_raise_no_retry_storm(good: Env) -> None:
    retried, succeeded = good.events("retried", "good.fetch"), good.events("succeeded",
                                                                            "good.fetch")
    good.app.send_task("good.fetch", args=(99,))
    good.wait_events("succeeded", "good.fetch", succeeded + 1)
    assert good.events("retried", "good.fetch") == retried + 2
    good.settle()
    no_finding(good, "retry_storm")


# -- unread_results ---------------------------------------------------------------------------
def test_unread_results_found(bad: Env) -> None:
    assert bad.exporter.practices()["coverage"]["unread_results"] == "active"
    for i in range(6):
        bad.app.send_task("bad.compute", args=(i,))
    f = bad.finding("unread_results", "bad.compute")
    ev = f["evidence"]
    assert ev["sampled_results"] >= 5 and ev["unread_share"] >= 0.9
    assert ev["ignore_result"] is False
    assert "ignore_result is not set" in f["summary"]
    assert bad.gauge("unread_results", "bad.compute") == 1
    assert bad.total("unread_results", "bad.compute") >= 5


def test_results_read_raise_no_unread_results(good: Env) -> None:
    sent = [good.app.send_task("good.report", args=(i,)) for i in range(6)]
    good.wait_events("succeeded", "good.report", 6)
    # the workload, not a wait: the caller reads its results later than the idle-time
    # resolution (the realistic poll-later case)
    time.sleep(2.5)
    assert [good.app.AsyncResult(r.id).get(timeout=10) for r in sent] == list(range(1, 7))
    unread = OPTIONS["unread_results"]
    good.settle(2 * unread["grace_seconds"] + unread["tolerance_seconds"])  # both looks
    no_finding(good, "unread_results")


# -- orm_object_argument ----------------------------------------------------------------------
def test_orm_object_argument_found(bad: Env) -> None:
    # Real objects, pickled; Celery puts repr(args) in the message (argsrepr).
    bad.app.send_task("bad.process", args=(User(1, "bob-secret"), Order(2)),
                      kwargs={"invoice": Invoice(3, 4321.987), "n": 1}, serializer="pickle")
    # JSON-serializable primary key with a model-like argsrepr (e.g. a custom repr).
    bad.app.send_task("bad.process", args=(7,), argsrepr="(<User: alice-secret>,)")
    bad.wait_events("succeeded", "bad.process", 2)
    wait_for(lambda: bad.finding("orm_object_argument", "bad.process")["count"] == 2,
             message="two offending messages")
    f = bad.finding("orm_object_argument", "bad.process")
    assert f["evidence"]["arguments"] == [
        {"argument": "0", "class": "User"}, {"argument": "1", "class": "Order"},
        {"argument": "invoice", "class": "Invoice"}]
    assert bad.total("orm_object_argument", "bad.process") == 2
    assert bad.gauge("orm_object_argument", "bad.process") == 1
    # no argument value anywhere: the names, and an amount with enough digits that a
    # timestamp in the payload contains it by chance once in ~10^7 runs (99.5 did)
    payload = json.dumps(bad.exporter.practices())
    assert "secret" not in payload and "4321.987" not in payload


def test_primary_keys_raise_no_orm_object_argument(good: Env) -> None:
    user = User(5, "carol")
    good.app.send_task("good.touch", args=(user.pk,))
    good.app.send_task("good.touch", kwargs={"user_id": user.pk})
    good.wait_events("succeeded", "good.touch", 2)
    good.settle()
    no_finding(good, "orm_object_argument")


# -- missing_time_limit -----------------------------------------------------------------------
def test_missing_time_limit_found(bad: Env) -> None:
    counted = bad.total("missing_time_limit", "bad.slow")
    bad.app.send_task("bad.slow", args=(3,))
    f = bad.finding("missing_time_limit", "bad.slow")
    assert f["evidence"]["running_now_over_limit"] == 1  # seen while still running
    assert f["evidence"]["time_limit"].startswith("none")
    assert "no time limit" in f["summary"]
    bad.wait_events("succeeded", "bad.slow", 1)
    wait_for(lambda: bad.finding("missing_time_limit", "bad.slow")["evidence"]
             ["completed_runs_over_limit"] == 1, message="completed run recorded")
    assert bad.total("missing_time_limit", "bad.slow") == counted + 1  # counted once
    assert bad.gauge("missing_time_limit", "bad.slow") == 1


def test_time_limited_long_task_raises_no_finding(good: Env) -> None:
    good.app.send_task("good.crunch", args=(2.5,))
    good.wait_events("succeeded", "good.crunch", 1)
    good.settle()
    no_finding(good, "missing_time_limit")


# -- lost_task --------------------------------------------------------------------------------
def test_lost_task_found_when_worker_killed(bad: Env) -> None:
    doomed = WorkerProcess("tests.apps.bad_tasks", bad.broker, queues="doomed",
                           name=f"doomed{int(time.time()) % 10000}@fp-test", concurrency=1,
                           env=bad.worker_env)
    doomed.start(bad.app)
    try:
        bad.app.send_task("bad.slow", args=(60,), queue="doomed")
        wait_for(lambda: bad.exporter.total("celery_task_events_total", type="started",
                                            task="bad.slow", queue="doomed") == 1,
                 message="task started on the doomed worker")
        doomed.kill()  # SIGKILL mid-task: no worker-offline, no task result
        f = bad.finding("lost_task", "bad.slow", worker=doomed.name)
    finally:
        doomed.kill()
    assert f["severity"] == "critical" and f["queue"] == "doomed"
    assert f["evidence"]["lost_tasks"] == 1
    assert len(f["evidence"]["task_ids"]) == 1  # the id to look up in Flower, no arguments
    assert f["evidence"]["reasons"] == ["heartbeats expired"]
    assert f["evidence"]["acks_late"] is False
    assert bad.exporter.total("celery_practice_violation", practice="lost_task",
                              worker=doomed.name) == 1
    assert bad.total("lost_task", "bad.slow") == 1


def test_graceful_shutdown_loses_no_task(good: Env) -> None:
    leaving = WorkerProcess("tests.apps.good_tasks", good.broker, queues="batch",
                            name=f"leaving{int(time.time()) % 10000}@fp-test", concurrency=1)
    leaving.start(good.app)

    def events(etype: str) -> float:
        # any queue label: on a loaded machine task-started can overtake its task-sent
        return good.exporter.total("celery_task_events_total", type=etype,
                                   task="good.crunch")

    started, succeeded = events("started"), events("succeeded")  # earlier tests' runs
    try:
        good.app.send_task("good.crunch", args=(2,), queue="batch")
        wait_for(lambda: events("started") == started + 1, timeout=90,
                 message="task started on the leaving worker")
        leaving.stop()  # warm shutdown: finishes the task, then worker-offline
    finally:
        leaving.kill()
    wait_for(lambda: events("succeeded") == succeeded + 1,
             message="task finished during warm shutdown")
    # past heartbeat expiry (Celery's 2 x freq, freq 2 s here; the last heartbeat came
    # before the worker exited)
    good.settle(HEARTBEAT_EXPIRY_SECONDS)
    no_finding(good, "lost_task")


# -- count is the violations series, for every practice found above ---------------------------
def _series_sum(exporter: RunningExporter, f: dict) -> float:
    """The celery_practice_violations_total series a finding stands for (a field the
    finding leaves unset matches any value; the counter has no worker label)."""
    match = {"practice": f["practice"]}
    for field in ("queue", "task"):
        if f[field] is not None:
            match[field] = f[field]
    return exporter.total("celery_practice_violations_total", **match)


def test_every_finding_count_equals_its_violations_series(bad: Env) -> None:
    """Runs after the bad-app tests above: each finding they raised is checked."""
    practices = {f["practice"] for f in bad.exporter.findings()}
    assert {"retryless_failure", "retry_storm", "unread_results",
            "orm_object_argument", "missing_time_limit", "lost_task"} <= practices

    def mismatches() -> list:
        # the counter moves on the hot path, the finding at the next evaluation: compare
        # once both have settled
        return [(f["practice"], f["task"], f["count"], _series_sum(bad.exporter, f))
                for f in bad.exporter.findings()
                if f["count"] != _series_sum(bad.exporter, f)]

    wait_for(lambda: not mismatches(), timeout=15,
             message="every finding's count equal to its violations series")
    for f in bad.exporter.findings():
        assert f["count"] >= 1, f
        assert "active_seconds" in f


# -- RabbitMQ with the rpc:// result backend -------------------------------------------------
def test_task_findings_over_rabbitmq_with_rpc_results(amqp_url: str) -> None:
    """Results over AMQP reply queues: unread_results says it cannot judge them (it reads
    Redis key metadata); the event-driven rules work as on any broker."""
    app = bad_tasks.make_app(amqp_url, "rpc://")
    with RunningExporter(app, settings(), app_loaded=True) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        with WorkerProcess("tests.apps.bad_tasks", amqp_url, queues="celery",
                           env={**PICKLE_AS_ROOT, "FP_TEST_BACKEND": "rpc://"}).start(app):
            env = Env(amqp_url, app, exporter, [])
            sent = [app.send_task("bad.compute", args=(i,)) for i in range(3)]
            assert [r.get(timeout=30) for r in sent] == [0, 2, 4]  # results do flow
            app.send_task("bad.fetch", args=(1,))
            f = env.finding("retryless_failure", "bad.fetch")
            assert f["evidence"]["exception_classes"] == {"ConnectionError": 1}
            cov = exporter.practices()["coverage"]["unread_results"]
            assert cov == "unsupported: result backend 'rpc' is not Redis " \
                "(OBJECT IDLETIME is Redis-only)", cov
            assert not exporter.findings("unread_results")
