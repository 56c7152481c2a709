"""``ignore_tasks`` at run time: the same setting ``flower-practices check`` honours.

A real exporter (app loaded) and a real worker on the real Redis: ``gate.fetch`` and
``gate.legacy_fetch`` both fail with ConnectionError and no retry policy; the config
ignores ``gate.legacy_*`` for retryless_failure. ``gate.fetch`` is found and counted,
``gate.legacy_fetch`` is neither (its failures are still counted as task events). A
finding saved before the ignore was configured does not come back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.ignores import TaskIgnore
from flower_practices.store import Snapshot
from tests.apps import check_gate
from tests.support.brokers import fresh_redis_url, release_redis_dbs
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

IGNORE = {"retryless_failure": {"ignore_tasks": ["gate.legacy_*"]}}


def settings() -> Settings:
    return Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                    practices={k: dict(v) for k, v in IGNORE.items()})


@pytest.fixture()
def broker() -> Iterator[str]:
    url = fresh_redis_url()
    try:
        yield url
    finally:
        release_redis_dbs(url)


@pytest.mark.slow
def test_ignored_task_is_neither_counted_nor_found(broker: str) -> None:
    app = check_gate.make_app(broker)
    with RunningExporter(app, settings(), app_loaded=True) as exporter, \
            WorkerProcess("tests.apps.check_gate", broker, queues="celery").start(app):
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        for i in range(3):
            app.send_task("gate.fetch", args=(i,))
            app.send_task("gate.legacy_fetch", args=(i,))

        def failed(task: str) -> float:
            return exporter.total("celery_task_events_total", type="failed", task=task)

        wait_for(lambda: failed("gate.fetch") == 3 and failed("gate.legacy_fetch") == 3,
                 timeout=60, message="3 failures of each task")
        exporter.wait_evaluated()  # began after every failure was taken: they are judged
        wait_for(lambda: [f for f in exporter.findings("retryless_failure")
                          if f["task"] == "gate.fetch" and f["count"] == 3],
                 message="gate.fetch found, 3 counted")
        found = {f["task"] for f in exporter.findings("retryless_failure")}
        assert found == {"gate.fetch"}, found

        def violations(task: str) -> float:  # raises if the family is not exposed at all
            return exporter.total("celery_practice_violations_total",
                                  practice="retryless_failure", task=task)

        assert violations("gate.fetch") == 3
        assert violations("gate.legacy_fetch") == 0
        assert exporter.total("celery_practice_violation", practice="retryless_failure",
                              task="gate.legacy_fetch") == 0


def test_restored_finding_of_an_ignored_task_is_dropped(tmp_path: Path) -> None:
    now = time.time()
    items = [{"practice": "retryless_failure", "queue": "celery", "task": task,
              "worker": None, "severity": "warning", "summary": "s", "evidence": {},
              "first_seen": now - 100, "last_seen": now - 10, "count": 2}
             for task in ("gate.fetch", "gate.legacy_fetch")]
    engine = Engine(settings(), broker_url="redis://127.0.0.1:6379/0")
    engine.restore_state(Snapshot(findings=items), now=now)
    assert {f.task for f in engine.findings.active()} == {"gate.fetch", "gate.legacy_fetch"}
    engine.evaluate(now=now + 1)
    assert {f.task for f in engine.findings.active()
            if f.practice == "retryless_failure"} == {"gate.fetch"}


def test_match_is_cached_and_bounded() -> None:
    ignore = TaskIgnore(["proj.tasks.legacy_*", "proj.[ab].run"])
    assert ignore.ignored("proj.tasks.legacy_export")
    assert ignore.ignored("proj.a.run") and not ignore.ignored("proj.c.run")
    assert not ignore.ignored("proj.tasks.export") and not ignore.ignored(None)
    assert not ignore.ignored("PROJ.TASKS.LEGACY_X")  # case-sensitive, as task names are
    for i in range(20_000):  # hostile names: the cache stops growing, answers stay right
        assert ignore.ignored(f"proj.tasks.legacy_{i}")
    assert len(ignore._cache) == 10_000
