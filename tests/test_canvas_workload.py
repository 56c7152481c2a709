"""Canvas workloads whose results are read raise no finding; unread results still do.

A real prefork worker of ``tests.apps.canvas`` on the real Redis (broker and result
backend), every rule enabled, short thresholds. Correct code first: ``chain(...).get()``
(the middle link's result is passed on in the next message, never read from the backend),
``group``, ``chord`` with the Redis backend's native join (header results go to the
chord's ``.j`` list), a chord whose header tasks ignore their results (this works with the
Redis backend: the join never reads the header's result keys), ``starmap``, ``chunks``,
results polled by id (``AsyncResult(id).ready()`` then ``.get()``, as a web view polls
a task's status), and results read later by another process. Then the must-fire half:
results nobody reads, the last link of a chain nobody waits for, and the header tasks of
a chord started from a task that nobody waits for (fixable: the same chord with
``ignore_result=True`` headers works and raises nothing).
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from celery import chain, chord, group
from celery.result import AsyncResult

from flower_practices.config import Settings
from tests.apps import canvas
from tests.support.brokers import fresh_redis_url, release_redis_dbs
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import ROOT, WorkerProcess

pytestmark = pytest.mark.slow

#: min_samples stays at its default (20): a task is judged on 20 results or more
UNREAD = {"grace_seconds": 5.0, "tolerance_seconds": 1.0,
          # a lower bar than the default 3: a wrong "unread" shows sooner
          "min_unread_evidence": 1.0}
OPTIONS = {
    "queue_without_consumer": {"grace_seconds": 3.0},
    "queue_starvation": {"max_wait_seconds": 10.0, "min_samples": 3},
    "prefetch_starvation": {"min_wait_seconds": 5.0},
    "events_disabled": {"min_processed": 2, "min_received": 2},
    "unread_results": UNREAD,
    "missing_time_limit": {"max_runtime_seconds": 2.0},
    "lost_task": {"grace_seconds": 0.0},
}


class Env:
    def __init__(self, app, exporter: RunningExporter) -> None:
        self.app = app
        self.exporter = exporter

    def succeeded(self, task: str) -> float:
        return self.exporter.total("celery_task_events_total", type="succeeded", task=task)

    def judged_after(self, read_at: float) -> None:
        """Wait until every result so far was checked twice (the first look grace after
        the last success, the second look grace after that) and two evaluations judged
        the verdicts."""
        self.exporter.wait_evaluated(since=read_at + 2 * UNREAD["grace_seconds"]
                                     + UNREAD["tolerance_seconds"] + 1.0)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    url = fresh_redis_url()
    app = canvas.make_app(url, url)
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                        practices={k: dict(v) for k, v in OPTIONS.items()})
    worker = WorkerProcess("tests.apps.canvas", url, queues=",".join(canvas.QUEUES),
                           pool="prefork", concurrency=2,
                           name=f"canvas-{int(time.time() * 1000) % 100000}@fp-cv",
                           env={"FP_CANVAS_SECONDS": "0.1"})
    try:
        with RunningExporter(app, settings, app_loaded=True) as exporter:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            worker.start(app)
            try:
                yield Env(app, exporter)
            finally:
                worker.stop()
    finally:
        release_redis_dbs(url)


def test_canvas_results_read_by_the_canvas_or_its_caller_raise_no_finding(env: Env) -> None:
    app, t = env.app, env.app.tasks
    add, mul, tsum = t["canvas.add"], t["canvas.mul"], t["canvas.tsum"]
    for i in range(20):  # canvas.mul is only ever a middle link: 20 results to judge
        assert chain(add.s(i, 1), mul.s(), add.s(3)).delay().get(timeout=30) == (i + 1) * 2 + 3
    for i in range(6):
        assert group(add.s(i, j) for j in range(3)).delay().get(timeout=30) == [i, i + 1, i + 2]
        assert chord((add.s(i, j) for j in range(3)), tsum.s()).delay().get(
            timeout=30) == 3 * i + 3
        # header tasks that store no result: the Redis backend joins them all the same
        assert chord((t["canvas.add_ignored"].s(i, j) for j in range(3)), tsum.s()).delay(
        ).get(timeout=30) == 3 * i + 3
    for i in range(3):
        assert add.starmap([(i, j) for j in range(3)]).delay().get(timeout=30) == [
            i, i + 1, i + 2]
        assert add.chunks([(i, j) for j in range(4)], 2).group().delay().get(
            timeout=30) == [[i, i + 1], [i + 2, i + 3]]
    # Browsers poll a status endpoint about once a second per task, by id, then fetch
    # the result: each result is read by key less than ~1.25 s after it was stored.
    due = {t["canvas.polled"].delay(i, 1).id: time.time() for i in range(30)}
    while due:
        time.sleep(0.02)  # the pollers' timers (the workload), not a wait on the system
        for task_id, at in list(due.items()):
            if time.time() < at:
                continue
            result = AsyncResult(task_id, app=app)
            if result.ready():
                assert result.get(timeout=5) is not None
                del due[task_id]
            else:
                due[task_id] = time.time() + random.uniform(0.75, 1.25)
    # results read by another process, a few seconds after they were stored
    later = [add.delay(i, 2).id for i in range(8)]
    wait_for(lambda: all(AsyncResult(i, app=app).ready() for i in later), timeout=60,
             message="the results read later are stored")
    code = ("import sys, time; from tests.apps.canvas import make_app; "
            f"app = make_app({app.conf.broker_url!r}, {app.conf.broker_url!r}); "
            "time.sleep(3); "  # the reader's own schedule (a periodic job, say)
            f"print([app.AsyncResult(i).get(timeout=30) for i in {later!r}])")
    reader = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=str(ROOT))
    assert reader.returncode == 0, reader.stderr[-2000:]
    assert reader.stdout.strip() == str([i + 2 for i in range(8)])
    read_at = time.time()
    env.judged_after(read_at)
    payload = env.exporter.practices()
    assert payload["coverage"]["unread_results"] == "active"
    assert payload["findings"] == []
    assert env.exporter.total("celery_practice_violations_total") == 0


def test_results_nobody_reads_are_still_reported(env: Env) -> None:
    t = env.app.tasks
    for i in range(24):
        t["canvas.dropped"].delay(i, 1)            # fire and forget, result stored
        chain(t["canvas.add"].s(i, 1), t["canvas.tail"].s()).delay()  # nobody waits
    wait_for(lambda: env.succeeded("canvas.dropped") >= 24 and env.succeeded("canvas.tail")
             >= 24, timeout=60, message="the unread workload to finish")
    done_at = time.time()
    wait_for(lambda: {f["task"] for f in env.exporter.findings("unread_results")}
             >= {"canvas.dropped", "canvas.tail"},
             timeout=done_at - time.time() + 2 * UNREAD["grace_seconds"] + 30,
             message="unread_results for the dropped results and the chain's last link")
    findings = {f["task"]: f for f in env.exporter.findings("unread_results")}
    # the chain's first link passed its result on: it is not reported
    assert set(findings) == {"canvas.dropped", "canvas.tail"}, sorted(findings)
    for task in ("canvas.dropped", "canvas.tail"):
        evidence = findings[task]["evidence"]
        # nothing read them: no result of theirs may be taken for read
        assert evidence["read_by_key"] == 0, evidence
        assert evidence["passed_to_child_task"] == 0, evidence
        assert evidence["unread_share"] == 1.0, evidence


def test_a_chord_nobody_waits_for_reports_its_headers_unless_they_ignore_results(
        env: Env) -> None:
    """Header results reach the callback through the chord's ``.j`` list: stored and
    never read when nobody waits on the chord. Fixable, so reported; with
    ``ignore_result=True`` on header and callback the chord still works, and nothing is."""
    start = env.app.tasks["canvas.start_chord"]
    for _ in range(2):
        start.delay(15, False)
        start.delay(15, True)
    wait_for(lambda: env.succeeded("canvas.merge") == 2
             and env.succeeded("canvas.merge_ignored") == 2, timeout=60,
             message="both kinds of chords to complete")
    done_at = time.time()
    wait_for(lambda: next((f for f in env.exporter.findings("unread_results")
                           if f["task"] == "canvas.part"), None),
             timeout=2 * UNREAD["grace_seconds"] + 30,
             message="unread_results for the chord header canvas.part")
    # the evidence once every header result was judged: the finding may be raised
    # before the last header's result (the passed-on one) is checked
    env.judged_after(done_at)
    evidence = next(f for f in env.exporter.findings("unread_results")
                    if f["task"] == "canvas.part")["evidence"]
    # the header task that finished last sent the callback: its result was passed on
    assert 1 <= evidence["passed_to_child_task"] <= 2, evidence
    assert evidence["read_by_key"] == evidence["read_over_pubsub"] == 0, evidence
    tasks = {f["task"] for f in env.exporter.findings()}
    assert not tasks & {"canvas.part_ignored", "canvas.merge_ignored", "canvas.start_chord"}
