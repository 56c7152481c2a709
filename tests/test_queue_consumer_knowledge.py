"""queue_without_consumer keeps consumer knowledge per worker (real workers, real Redis).

- Workers starting and stopping on *other* queues, and a worker that never answers
  remote control, neither hide nor reset the finding of a queue nobody consumes: it
  appears once, keeps its first_seen, and names the worker that did not answer.
- A queue consumed by a busy solo worker that cannot answer remote control (it is off)
  is not reported: the worker's task events show what it consumes.
- One cause, one finding: the unconsumed queue raises no queue_starvation, and the
  finding's count equals its celery_practice_violations_total series.
"""

from __future__ import annotations

import time

import pytest

from flower_practices.config import Settings
from tests.apps.queues import make_app
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

PRACTICES = {
    "queue_without_consumer": {"grace_seconds": 2.0, "unanswered_worker_grace_seconds": 4.0},
    "queue_starvation": {"max_wait_seconds": 2.0, "min_samples": 1},
}


def settings(unanswered_grace: float = 4.0) -> Settings:
    practices = {k: dict(v) for k, v in PRACTICES.items()}
    practices["queue_without_consumer"]["unanswered_worker_grace_seconds"] = unanswered_grace
    return Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                    practices=practices)


def worker(broker: str, queues: str, tag: str, **kw) -> WorkerProcess:
    name = f"{tag}-{int(time.time() * 1000) % 100000}@fp-churn"
    return WorkerProcess("tests.apps.queues", broker, queues=queues, name=name, **kw)


def violation_series(exporter: RunningExporter, practice: str) -> list[tuple[dict, float]]:
    """celery_practice_violations_total series of ``practice``: (labels but practice, value)."""
    out = []
    for (name, labels), value in sorted(exporter.samples().items()):
        lbls = dict(labels)
        if name == "celery_practice_violations_total" and lbls.pop("practice") == practice:
            out.append((lbls, value))
    return out


def orphan_findings(exporter: RunningExporter, queue: str) -> list[dict]:
    return [f for f in exporter.findings("queue_without_consumer") if f["queue"] == queue]


def test_finding_is_stable_under_worker_churn(redis_url: str) -> None:
    producer = make_app(redis_url)
    silent = worker(redis_url, "other", "silent", env={"FP_REMOTE_CONTROL": "0"})
    procs: list[WorkerProcess] = []
    with RunningExporter(producer, settings(), app_loaded=True) as exporter:
        try:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            procs.append(silent.start(producer, ping=False))
            for i in range(5):
                producer.send_task("queues.quick", args=(i,), queue="orphan")
            (first,) = wait_for(lambda: orphan_findings(exporter, "orphan"), timeout=45,
                                message="queue_without_consumer for 'orphan'")
            wait_for(lambda: silent.name in orphan_findings(exporter, "orphan")[0]
                     ["evidence"]["workers_not_answering"], timeout=30,
                     message="the silent worker named in the evidence")
            # Churn on another queue: a worker starts (unknown until it answers), runs a
            # task, stops; again and again, while the finding is watched.
            observed = 0
            last_unconsumed = 0.0
            for round_ in range(4):
                churn = worker(redis_url, "other", f"churn{round_}").start(producer)
                procs.append(churn)
                producer.send_task("queues.quick", args=(round_,), queue="other")
                deadline, seen = time.time() + 3.0, 0
                while time.time() < deadline or seen < 5:  # 3 s and 5 looks at least
                    seen += 1
                    found = orphan_findings(exporter, "orphan")
                    assert len(found) == 1, found
                    assert found[0]["first_seen"] == first["first_seen"]
                    unconsumed = found[0]["evidence"]["unconsumed_for_seconds"]
                    assert unconsumed >= last_unconsumed, (unconsumed, last_unconsumed)
                    last_unconsumed = unconsumed
                    observed += 1
                    time.sleep(0.2)
                churn.stop()
            assert observed >= 20
            (f,) = orphan_findings(exporter, "orphan")
            assert f["first_seen"] == first["first_seen"]
            assert f["evidence"]["messages_waiting"] == 5
            # count: the 5 messages that entered the unconsumed queue, the same figure
            # as its (single, per-queue) violations series
            assert f["count"] == 5
            assert violation_series(exporter, "queue_without_consumer") == \
                [({"queue": "orphan", "task": ""}, 5.0)]
            assert 0 < f["active_seconds"] <= last_unconsumed
            # one cause, one finding
            assert not [s for s in exporter.findings("queue_starvation")
                        if s["queue"] == "orphan"]
        finally:
            for p in procs:
                p.stop()


def test_queue_of_a_busy_solo_worker_is_not_unconsumed(redis_url: str) -> None:
    producer = make_app(redis_url, prefetch=1)
    with RunningExporter(producer, settings(), app_loaded=True) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        solo = worker(redis_url, "solo", "solo", pool="solo", concurrency=1,
                      env={"FP_PREFETCH": "1"}).start(producer)
        try:
            wait_for(lambda: exporter.value("celery_queue_consumers", queue="solo") == 1,
                     timeout=30, message="the solo worker's active_queues probed")
            # Busy with a long task: a solo pool then answers no remote control and sends
            # no heartbeat and no event until it is done, while more messages wait.
            producer.send_task("queues.slow", args=(20,), queue="solo")
            for i in range(6):
                producer.send_task("queues.quick", args=(i,), queue="solo")
            wait_for(lambda: exporter.value("celery_queue_length", queue="solo") == 6,
                     timeout=30, message="6 messages waiting behind the long task")
            assert producer.control.ping(destination=[solo.name], timeout=1.0) == []
            # well past grace_seconds, unanswered_worker_grace_seconds and the expiry of
            # its last heartbeat
            judged_until = time.time() + 10.0
            while exporter.evaluated_at() < judged_until:
                assert not orphan_findings(exporter, "solo")
                time.sleep(0.5)
            exporter.wait_evaluated(since=judged_until, rounds=1)
            assert not orphan_findings(exporter, "solo")
            assert exporter.total("celery_practice_violations_total",
                                  practice="queue_without_consumer") == 0
        finally:
            solo.kill()
