"""unread_results tells results read over pub/sub from results nobody reads.

Real worker, real Redis as broker and result backend, the exporter as deployed. A client
waiting in ``AsyncResult.get()`` receives the result over pub/sub and never reads the key
(its idle time looks unread): the rule sees the client's subscription instead. Results
consumed with ``.get()`` (at once, or seconds after the success) raise no finding, nor
do results fetched by id after the rule's first look at them (``AsyncResult(id).get()``
by a caller that kept only the id: the second look sees the read);
fire-and-forget results that nobody reads do, as do unread results of tasks sent from a
worker (never subscribed), and the finding's ``count`` equals its
``celery_practice_violations_total`` series. The same holds for an app that shares its
Redis under a ``global_keyprefix``.
"""

from __future__ import annotations

import time

import pytest
from celery.result import AsyncResult

from flower_practices.config import Settings
from flower_practices.rules.unread_results import too_few_sightings
from tests.apps.results import make_app
from tests.support.brokers import fresh_redis_url, release_redis_dbs
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

OPTIONS = {"grace_seconds": 5.0, "min_samples": 5, "tolerance_seconds": 1.0}


def succeeded(exporter: RunningExporter, task: str) -> float:
    return exporter.total("celery_task_events_total", type="succeeded", task=task)


@pytest.mark.parametrize("key_prefix", ["", "shared-app"])
def test_pubsub_reads_are_reads_and_dropped_results_are_unread(key_prefix: str) -> None:
    """``key_prefix``: the app shares its Redis (``global_keyprefix`` for the broker and
    the results): its result keys and channels are ``shared-app_celery-task-meta-<id>``
    as Celery names them, and its events take kombu's receiver."""
    broker = fresh_redis_url()
    app = make_app(broker, key_prefix)
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                        practices={"unread_results": dict(OPTIONS)})
    worker = WorkerProcess("tests.apps.results", broker, queues="celery", concurrency=4,
                           name=f"results-{int(time.time() * 1000) % 100000}@fp-test",
                           env={"FP_TEST_KEY_PREFIX": key_prefix})
    try:
        with RunningExporter(app, settings, app_loaded=True) as exporter:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            assert exporter.practices()["coverage"]["unread_results"] == "active"
            worker.start(app)
            waited, later, dropped = (app.tasks[f"results.{n}"]
                                      for n in ("waited", "later", "dropped"))
            # 1. .delay(x).get(), 25 times
            assert [waited.delay(i).get(timeout=30) for i in range(25)] == list(range(1, 26))
            # 2. .delay() now, .get() seconds after the results were stored
            kept = [later.delay(i) for i in range(8)]
            wait_for(lambda: succeeded(exporter, "results.later") == 8, timeout=30,
                     message="results.later succeeded")
            time.sleep(2.5)  # the workload, not a wait: the caller reads seconds later
            assert [r.get(timeout=10) for r in kept] == list(range(1, 9))
            del kept
            # 5. only the ids kept; each result fetched by id after the rule's first look
            # at it (grace_seconds after its success) and before the second (as long
            # again): a report downloaded a while after it was asked for
            by_id = app.tasks["results.by_id"]
            # (as many as make fire-and-forget results count: see min_unread_evidence)
            kept_ids = [by_id.delay(i).id for i in range(30)]
            wait_for(lambda: succeeded(exporter, "results.by_id") == 30, timeout=30,
                     message="results.by_id succeeded")
            exporter.wait_evaluated(since=time.time() + OPTIONS["grace_seconds"]
                                    + OPTIONS["tolerance_seconds"])
            assert [AsyncResult(i, app=app).get(timeout=10) for i in kept_ids] == \
                list(range(1, 31))
            read_at = time.time()
            # 3. fire-and-forget: the AsyncResult is dropped at once, nobody reads
            for i in range(30):
                dropped.delay(i)
            # 4. sent from a worker (as beat or a chain would): nobody ever subscribes
            app.tasks["results.fanout"].delay(30)
            f = wait_for(lambda: next((x for x in exporter.findings("unread_results")
                                       if x["task"] == "results.dropped"), None),
                         timeout=60, message="unread_results for results.dropped")
            ev = f["evidence"]
            assert ev["unread_results"] >= 5 and ev["read_by_key"] == 0
            # a snapshot may catch a caller in the milliseconds it holds the channel
            # before dropping the AsyncResult: such sightings are too few for waiters
            assert not ev["pubsub_readers_seen"] or too_few_sightings(
                ev["read_over_pubsub"], ev["expected_pubsub_sightings"], 3.0), ev
            assert ev["unread_evidence"] >= ev["min_unread_evidence"] == 3.0
            f = wait_for(lambda: next((x for x in exporter.findings("unread_results")
                                       if x["task"] == "results.from_worker"), None),
                         timeout=60, message="unread_results for results.from_worker")
            assert f["evidence"]["read_over_pubsub"] == 0
            # the waited and the later-read results were judged (all past both looks)
            # and none is reported
            exporter.wait_evaluated(
                since=read_at + 2 * OPTIONS["grace_seconds"] + OPTIONS["tolerance_seconds"])
            reported = {x["task"] for x in exporter.findings("unread_results")}
            assert reported == {"results.dropped", "results.from_worker"}, \
                exporter.findings("unread_results")
            for task in ("results.waited", "results.later", "results.by_id"):
                assert exporter.total("celery_practice_violations_total",
                                      practice="unread_results", task=task) == 0
            f = next(x for x in exporter.findings("unread_results")
                     if x["task"] == "results.dropped")
            assert f["count"] == exporter.total("celery_practice_violations_total",
                                                practice="unread_results",
                                                task="results.dropped") >= 5
            worker.stop()
    finally:
        worker.kill()
        release_redis_dbs(broker)
