"""retry_storm judges back-off by the task's policy and the distribution of delays.

Real workers on the real Redis, the app loaded (``-A``), the rule's default thresholds:
jittered exponential back-off (which draws 0 s delays on purpose) and the runbook's
recommended configuration raise no finding, while retries with a 0.2 s countdown are a
storm whose evidence reports that delay correctly (measured from the retry's task-sent),
and whose ``count`` equals its ``celery_practice_violations_total`` series. One message
retried every second without limit is a retry loop amid healthy runs of its task, while
a poller of the same task retrying every 5 s is not (30 s window, limit 6: the loop
retries up to 30 times per window, 7 even on a box so busy that a retry takes 4 s; the
poller, its countdown a floor, at most 6), however long it polls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from flower_practices.config import Settings
from tests.apps.retries import make_app
from tests.support.brokers import fresh_redis_url, release_redis_dbs
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow


def events(exporter: RunningExporter, etype: str, task: str) -> float:
    return exporter.total("celery_task_events_total", type=etype, task=task)


def settled_storm(exporter: RunningExporter, task: str, retries: int,
                  timeout: float = 30) -> dict:
    """``task``'s retry_storm finding once its evidence counts ``retries`` retries in the
    window (every retry judged)."""
    def settled() -> dict | None:
        found = [f for f in exporter.findings("retry_storm") if f["task"] == task]
        if found and found[0]["evidence"]["retries_in_window"] == retries:
            return found[0]
        return None

    return wait_for(settled, timeout=timeout, message=f"retry_storm for {task}")


@contextlib.contextmanager
def retries_env(tag: str, concurrency: int, retry_storm: dict | None = None,
                ) -> Iterator[tuple[Celery, RunningExporter, str]]:
    """A fresh Redis db, the exporter (app loaded, ``retry_storm`` options) and one
    worker of ``tests.apps.retries``: (app, exporter, broker)."""
    broker = fresh_redis_url()
    app = make_app(broker)
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0,
                        clear_after_seconds=600.0,
                        practices={"retry_storm": dict(retry_storm or {})})
    worker = WorkerProcess("tests.apps.retries", broker, queues="celery",
                           concurrency=concurrency,
                           name=f"{tag}-{int(time.time() * 1000) % 100000}@fp-test")
    try:
        with RunningExporter(app, settings, app_loaded=True) as exporter:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            worker.start(app)
            yield app, exporter, broker
            worker.stop()
    finally:
        worker.kill()
        release_redis_dbs(broker)


def test_backoff_with_jitter_is_no_storm_and_zero_delay_is() -> None:
    with retries_env("retries", 8) as (app, exporter, _):
        for i in range(12):
            app.send_task("retries.jittery", args=(i,))
        for i in range(6):
            app.send_task("retries.runbook", args=(i,))
        wait_for(lambda: events(exporter, "succeeded", "retries.jittery") == 12
                 and events(exporter, "succeeded", "retries.runbook") == 6, timeout=60,
                 message="all back-off tasks succeeded after two retries each")
        assert events(exporter, "retried", "retries.jittery") == 24
        assert events(exporter, "retried", "retries.runbook") == 12
        exporter.wait_evaluated()  # evaluations that judged every retry
        assert exporter.findings("retry_storm") == []
        assert exporter.total("celery_practice_violations_total",
                              practice="retry_storm") == 0

        for _ in range(3):
            app.send_task("retries.tight")
        wait_for(lambda: events(exporter, "failed", "retries.tight") == 3, timeout=60,
                 message="the tight tasks exhausted their retries")

        f = settled_storm(exporter, "retries.tight", 24)
        ev = f["evidence"]
        assert ev["zero_delay_retries"] == 24 and ev["zero_delay_share"] == 1.0
        assert ev["delay_measured_from"] == "the retry's task-sent event"
        # countdown=0.2, measured from the retry's task-sent event, which is stamped
        # after the eta was computed (on a busy machine tens of ms later): at most 0.2
        assert 0.1 <= ev["min_delay_seconds"] <= ev["max_delay_seconds"] <= 0.25, ev
        assert ev["retry_policy"]["retry_backoff"] is False
        assert "retry_backoff is not set" in f["summary"]
        # count: the storm's retries, the same figure as the violations series
        exporter.wait_evaluated()
        f = [x for x in exporter.findings("retry_storm") if x["task"] == "retries.tight"][0]
        assert f["count"] == 24
        assert exporter.total("celery_practice_violations_total", practice="retry_storm",
                              task="retries.tight") == f["count"]
        assert [x["task"] for x in exporter.findings("retry_storm")] == ["retries.tight"]


def test_one_message_in_a_retry_loop_is_found_and_a_poller_is_not() -> None:
    with retries_env("loops", 4, {"max_retries_per_message": 6, "window_seconds": 30.0}
                     ) as (app, exporter, broker):
        poison = app.send_task("retries.looping", args=(0,)).id
        poller = app.send_task("retries.looping", args=(1,)).id
        for i in range(2, 42):
            app.send_task("retries.looping", args=(i,))
        (f,) = wait_for(lambda: exporter.findings("retry_storm"), timeout=90,
                        message="retry_storm for the looping message")
        ev = f["evidence"]
        assert f["task"] == "retries.looping" and f["queue"] == "celery"
        assert ev["looping_messages"] == 1 and ev["looping_task_ids"] == [poison]
        assert ev["zero_delay_retries"] == 0  # a 1 s countdown: not the zero-delay kind
        assert ev["retry_share"] < 0.75
        assert "retried more than 6 times each" in f["summary"]
        assert events(exporter, "succeeded", "retries.looping") == 40
        # the poller retries every 5 s for more than a whole window: never a loop
        store = redis.Redis.from_url(broker)
        wait_for(lambda: int(store.get("retries:poller") or 0) >= 7, timeout=90,
                 message="the poller's 7th retry")
        exporter.wait_evaluated()
        (f,) = exporter.findings("retry_storm")
        assert f["evidence"]["looping_task_ids"] == [poison], f
        assert poller not in f["evidence"]["looping_task_ids"]
        assert f["count"] == exporter.total("celery_practice_violations_total",
                                            practice="retry_storm",
                                            task="retries.looping") > 0
