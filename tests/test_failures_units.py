"""Units of items 6-8 of issue #14 on the real engine fed with event dicts: the shared
exception-class parser (billiard's ExceptionWithTraceback wrapper), the signal parser,
worker_process_killed's confirmation and memory across a restart, its static check, the
exception-class cap and the oldest-pending-task ages. The real-worker tests are
tests/test_worker_process_killed.py and tests/test_failure_metrics.py."""

from __future__ import annotations

import time
from pathlib import Path

from flower_practices.appinfo import AppInfo, TaskInfo
from flower_practices.bounded import OTHER
from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.events.sanitize import failure_exception
from flower_practices.metrics import BaseMetrics
from flower_practices.rules.worker_process_killed import WorkerProcessKilled, killed_by
from flower_practices.state import RuntimeState
from flower_practices.store import StateStore

#: what Celery 5.7 / billiard 4.3 sends for a SIGKILLed pool process (task-failed)
WRAPPED = {
    "exception": "ExceptionWithTraceback()",
    "traceback": 'Traceback (most recent call last):\n  File "billiard/pool.py", line 1367, '
                 "in mark_as_worker_lost\n    raise WorkerLostError(\n"
                 "billiard.exceptions.WorkerLostError: Worker exited prematurely: signal 9 "
                 "(SIGKILL) Job: 0.\n",
}
#: what older billiard sends
PLAIN = {"exception": "WorkerLostError('Worker exited prematurely: signal 11 (SIGSEGV) "
                      "Job: 3.')", "traceback": "..."}
PRACTICE = "worker_process_killed"


def test_failure_exception_unwraps_billiard_and_reads_no_message() -> None:
    assert failure_exception(WRAPPED)[0] == "WorkerLostError"
    assert failure_exception(PLAIN)[0] == "WorkerLostError"
    assert failure_exception({"exception": "ValueError('secret')"}) == \
        ("ValueError", "ValueError('secret')")
    assert failure_exception({"exception": "redis.exceptions.ConnectionError('x')"})[0] == \
        "redis.exceptions.ConnectionError"
    # a wrapper without a usable traceback stays the wrapper, never the message
    assert failure_exception({"exception": "ExceptionWithTraceback()"})[0] == \
        "ExceptionWithTraceback"
    assert failure_exception({"exception": "ExceptionWithTraceback()",
                              "traceback": '\n"""\n  File "x", line 1\n"""'})[0] == \
        "ExceptionWithTraceback"
    huge = {"exception": "ExceptionWithTraceback()",
            "traceback": "x" * 1_000_000 + "\nbilliard.exceptions.WorkerLostError: boom"}
    assert failure_exception(huge)[0] == "WorkerLostError"
    for bad in ({}, {"exception": 3}, {"exception": ""}, {"exception": "('x',)"}):
        assert failure_exception(bad) == (None, "")


def test_killed_by_reads_only_the_signal() -> None:
    assert killed_by(failure_exception(WRAPPED)[1]) == "SIGKILL"
    assert killed_by(PLAIN["exception"]) == "SIGSEGV"
    assert killed_by("WorkerLostError('Worker exited prematurely: signal 64 Job: 1.')") == \
        "signal 64"
    assert killed_by("WorkerLostError('Worker exited prematurely: exitcode 1 Job: 1.')") is None
    assert killed_by("x" * 300 + "signal 9 (SIGKILL)") is None  # past the bounded scan
    assert killed_by(None) is None


def _engine(tmp_path: Path | None = None, **options) -> Engine:
    store = StateStore(tmp_path, "redis://x/0") if tmp_path is not None else None
    return Engine(Settings(practices={PRACTICE: options} if options else {}),
                  broker_url="redis://x/0", rule_classes=[WorkerProcessKilled], store=store)


def _kill(eng: Engine, uuid: str, t: float, payload: dict = WRAPPED) -> None:
    """A task that started on w1@h and failed at ``t`` with ``payload``."""
    for etype in ("task-sent", "task-received", "task-started"):
        eng.observe({"type": etype, "uuid": uuid, "name": "proj.hog", "queue": "q",
                     "hostname": "w1@h", "timestamp": t - 1, "local_received": t - 1})
    eng.observe({"type": "task-failed", "uuid": uuid, "hostname": "w1@h", "timestamp": t,
                 "local_received": t, **payload})


def _beat(eng: Engine, t: float, etype: str = "worker-heartbeat") -> None:
    eng.observe({"type": etype, "hostname": "w1@h", "timestamp": t, "local_received": t,
                 "freq": 2.0})


def _findings(eng: Engine) -> list[dict]:
    return [f for f in eng.practices_payload()["findings"] if f["practice"] == PRACTICE]


def test_counted_once_after_the_worker_shows_it_stayed_up() -> None:
    eng = _engine()
    t = time.time()
    _beat(eng, t - 10, "worker-online")
    _kill(eng, "u1", t - 3)
    eng.evaluate(t - 2.5)  # no sign of the worker since the failure yet
    assert _findings(eng) == [] and eng.metrics.violations_total == {}
    _beat(eng, t - 2)
    eng.evaluate(t - 1)
    (f,) = _findings(eng)
    assert (f["worker"], f["task"], f["queue"], f["count"]) == ("w1@h", "proj.hog", "q", 1)
    assert f["evidence"]["signals"] == {"SIGKILL": 1} and f["evidence"]["task_ids"] == ["u1"]
    eng.evaluate(t)
    assert _findings(eng)[0]["count"] == 1
    assert eng.metrics.violations_total == {(PRACTICE, "q", "proj.hog"): 1}
    assert eng.metrics.failures == {("proj.hog", "q", "WorkerLostError"): 1}


def test_dropped_when_the_worker_goes_away_after_the_failure() -> None:
    eng = _engine(confirm_seconds=5.0)
    t = time.time()
    _beat(eng, t - 20, "worker-online")
    _kill(eng, "u1", t - 12)
    _beat(eng, t - 11, "worker-offline")  # a shutdown, not a process killed under a live worker
    eng.evaluate(t - 10)
    eng.evaluate(t)  # past confirm_seconds: dropped
    rule = eng.rules[0]
    assert _findings(eng) == [] and len(rule.unconfirmed) == 0
    assert eng.metrics.violations_total == {}
    # ordinary failures never enter
    _beat(eng, t, "worker-online")
    _kill(eng, "u2", t, {"exception": "ValueError('x')"})
    assert len(rule.unconfirmed) == 0


def test_kills_survive_a_restart_neither_forgotten_nor_recounted(tmp_path: Path) -> None:
    t = time.time()
    first = _engine(tmp_path)
    _beat(first, t - 10, "worker-online")
    _kill(first, "u1", t - 5)
    _beat(first, t - 4)
    first.evaluate(t - 3)
    assert _findings(first)[0]["count"] == 1
    second = _engine(tmp_path)
    assert [tuple(k) for k in second.rules[0].tallies] == [("q", "proj.hog", "w1@h")]
    second.evaluate(t)
    (f,) = _findings(second)
    assert f["count"] == 1 and f["evidence"]["count"] == 1
    assert f["evidence"]["task_ids"] == ["u1"]
    assert second.metrics.violations_total == {}  # nothing counted again


def test_a_kill_the_worker_retried_counts_and_an_ordinary_retry_does_not() -> None:
    """``retry_on_worker_lost`` (Celery >= 5.7): the kill is a task-retried reporting
    WorkerLostError, counted as a kill; a retry for any other exception is not."""
    eng = _engine()
    t = time.time()
    _beat(eng, t - 10, "worker-online")
    _kill(eng, "u1", t - 6)  # failed for good
    for uuid, exc in (("u2", PLAIN["exception"]), ("u3", "TimeoutError('x')")):
        for etype in ("task-sent", "task-received", "task-started"):
            eng.observe({"type": etype, "uuid": uuid, "name": "proj.hog", "queue": "q",
                         "hostname": "w1@h", "timestamp": t - 5, "local_received": t - 5})
        eng.observe({"type": "task-retried", "uuid": uuid, "hostname": "w1@h",
                     "timestamp": t - 4, "local_received": t - 4, "exception": exc,
                     "traceback": "Traceback ..."})
    _beat(eng, t - 2)
    eng.evaluate(t - 1)
    (f,) = _findings(eng)
    assert f["count"] == 2 and f["evidence"]["retried"] == 1
    assert f["evidence"]["signals"] == {"SIGKILL": 1, "SIGSEGV": 1}
    assert f["evidence"]["task_ids"] == ["u2", "u1"]
    assert "(1 failed with WorkerLostError, 1 retried after WorkerLostError)" \
        in f["summary"]
    assert eng.metrics.violations_total == {(PRACTICE, "q", "proj.hog"): 2}
    # the retried count is part of the rule's memory
    (saved,) = eng.rules[0].memory()
    again = _engine()
    again.rules[0].restore_memory([saved], t)
    assert next(iter(again.rules[0].tallies.values())).retried == 1
    # a memory saved before retried kills were counted restores with none
    again.rules[0].restore_memory([saved[:7]], t)
    assert next(iter(again.rules[0].tallies.values())).retried == 0


def _rejecting_engine(**task: object) -> Engine:
    """The rule with the app loaded: ``proj.hog`` runs ``acks_late`` with
    ``reject_on_worker_lost`` and never names ``Reject`` (unless ``task`` says else)."""
    info = _app(False, False, {})
    info.tasks["proj.hog"] = TaskInfo(**{
        "name": "proj.hog", "max_retries": 3, "autoretry_for": (), "calls_retry": False,
        "time_limit": None, "soft_time_limit": None, "ignore_result": False,
        "queue": None, "acks_late": True, "reject_on_worker_lost": True,
        "raises_reject": False, **task})
    return Engine(Settings(), broker_url="redis://x/0", rule_classes=[WorkerProcessKilled],
                  app=info)


def _requeued(eng: Engine, uuid: str, t: float, *, started: bool = True) -> None:
    """A delivery of ``proj.hog`` received (and started) on w1@h, then handed back with
    task-rejected ``requeue=True`` at ``t``."""
    for etype in ("task-sent", "task-received", "task-started")[:3 if started else 2]:
        eng.observe({"type": etype, "uuid": uuid, "name": "proj.hog", "queue": "q",
                     "hostname": "w1@h", "timestamp": t - 1, "local_received": t - 1})
    eng.observe({"type": "task-rejected", "uuid": uuid, "hostname": "w1@h",
                 "requeue": True, "timestamp": t, "local_received": t})


def test_a_kill_requeued_by_reject_on_worker_lost_counts_when_nothing_else_can_be() -> None:
    """acks_late + reject_on_worker_lost: the kill is a task-rejected requeue=True of a
    started run. Counted only when the app shows nothing else requeues it: not when
    the task may raise Reject, when its time limit would be requeued too, when the run
    had not started, without the app, or for a requeue=False."""
    t = time.time()
    eng = _rejecting_engine()
    _beat(eng, t - 10, "worker-online")
    _requeued(eng, "u1", t - 5)
    _beat(eng, t - 4)
    eng.evaluate(t - 3)
    (f,) = _findings(eng)
    assert f["count"] == 1 and f["evidence"]["requeued"] == 1
    assert f["evidence"]["signals"] == {"none named": 1}
    assert "(1 requeued by reject_on_worker_lost)" in f["summary"]
    assert "exited prematurely" in f["summary"]
    assert eng.metrics.violations_total == {(PRACTICE, "q", "proj.hog"): 1}
    # its redelivery runs to success: nothing more
    for etype in ("task-received", "task-started", "task-succeeded"):
        eng.observe({"type": etype, "uuid": "u1", "name": "proj.hog", "hostname": "w1@h",
                     "timestamp": t - 2, "local_received": t - 2})
    eng.evaluate(t)
    assert _findings(eng)[0]["count"] == 1

    quiet = [_rejecting_engine(raises_reject=True),
             _rejecting_engine(time_limit=60, acks_on_timeout=False),
             _rejecting_engine(reject_on_worker_lost=False),
             Engine(Settings(), broker_url="redis://x/0",
                    rule_classes=[WorkerProcessKilled])]
    for eng in quiet:
        _beat(eng, t - 10, "worker-online")
        _requeued(eng, "u1", t - 5)
        _beat(eng, t - 4)
        eng.evaluate(t - 3)
        assert _findings(eng) == [] and eng.metrics.violations_total == {}
    eng = _rejecting_engine()
    _beat(eng, t - 10, "worker-online")
    _requeued(eng, "u2", t - 5, started=False)  # handed back before it ran
    eng.observe({"type": "task-rejected", "uuid": "u3", "hostname": "w1@h",
                 "requeue": False, "timestamp": t - 5, "local_received": t - 5})
    _beat(eng, t - 4)
    eng.evaluate(t - 3)
    assert _findings(eng) == []


def test_a_requeued_kill_reported_behind_an_idle_heartbeat_still_counts() -> None:
    """A worker buffers its task events, not its heartbeats: the heartbeat after the kill
    (``active=0``) can arrive before the task-rejected. The heartbeat ends the run
    unreported; the late task-rejected is still that started run's, so the kill counts
    (and the late end gets the run's times back: a failure's runtime is observed)."""
    t = time.time()
    eng = _rejecting_engine()
    _beat(eng, t - 10, "worker-online")
    for etype in ("task-sent", "task-received", "task-started"):
        eng.observe({"type": etype, "uuid": "u1", "name": "proj.hog", "queue": "q",
                     "hostname": "w1@h", "timestamp": t - 8, "local_received": t - 8})
    eng.observe({"type": "worker-heartbeat", "hostname": "w1@h", "timestamp": t - 5,
                 "local_received": t - 5, "freq": 2.0, "active": 0})
    assert eng.state.tasks_ended_unreported == 1
    eng.observe({"type": "task-rejected", "uuid": "u1", "hostname": "w1@h",
                 "requeue": True, "timestamp": t - 5.5, "local_received": t - 4.9})
    _beat(eng, t - 4)
    eng.evaluate(t - 3)
    (f,) = _findings(eng)
    assert f["count"] == 1 and f["evidence"]["requeued"] == 1
    # a run killed (task-failed WorkerLostError) whose end came behind the idle beat
    eng = Engine(Settings(), broker_url="redis://x/0")
    for etype in ("task-sent", "task-received", "task-started"):
        eng.observe({"type": etype, "uuid": "u2", "name": "proj.job", "queue": "q",
                     "hostname": "w1@h", "timestamp": t - 8, "local_received": t - 8})
    eng.observe({"type": "worker-heartbeat", "hostname": "w1@h", "timestamp": t - 5,
                 "local_received": t - 5, "freq": 2.0, "active": 0})
    eng.observe({"type": "task-failed", "uuid": "u2", "hostname": "w1@h",
                 "exception": "ValueError('x')", "timestamp": t - 5.5,
                 "local_received": t - 4.9})
    hist = eng.metrics.runtime[("proj.job", "q", "failed")]
    assert hist.count == 1 and abs(hist.sum - 2.5) < 1e-6


def _app(acks_late: bool, reject: bool, tasks: dict[str, tuple]) -> AppInfo:
    info = AppInfo(main="proj", broker_url="redis://", result_backend=None,
                   default_queue="celery", queues=(), has_routes=False,
                   task_serializer="json", result_serializer="json", accept_content=("json",),
                   prefetch_multiplier=1, send_sent_event=True, worker_send_task_events=True,
                   acks_late=acks_late, reject_on_worker_lost=reject)
    for name, (late, rej, *retry) in tasks.items():
        info.tasks[name] = TaskInfo(name=name, max_retries=3, autoretry_for=(),
                                    calls_retry=False, time_limit=None, soft_time_limit=None,
                                    ignore_result=False, queue=None, acks_late=late,
                                    reject_on_worker_lost=rej,
                                    retry_on_worker_lost=bool(retry and retry[0]))
    return info


def test_static_check_acks_late_without_reject_on_worker_lost() -> None:
    check = WorkerProcessKilled.static_check
    # app-wide: said once, not per task
    (only,) = check(_app(True, False, {"a": (True, False), "b": (True, False)}))
    assert only[0] is None and "task_acks_late" in only[1]
    # per task
    found = check(_app(False, False, {"a": (True, False), "b": (False, False),
                                      "c": (True, True)}))
    assert [task for task, _ in found] == ["a"]
    assert check(_app(True, True, {"a": (True, True)})) == []
    assert check(_app(False, False, {"a": (False, False)})) == []
    # retry_on_worker_lost retries a killed task first: not flagged
    assert check(_app(False, False, {"a": (True, False, True)})) == []
    found = check(_app(True, False, {"a": (True, False, True), "b": (True, False)}))
    assert [task for task, _ in found] == ["b"]


def test_exception_classes_capped_into_other() -> None:
    m = BaseMetrics(max_exception_classes=2)
    for cls in ("A", "B", "A", "C", "D", None):
        m.count_failure("t", "q", cls)
    assert m.failures == {("t", "q", "A"): 2, ("t", "q", "B"): 1, ("t", "q", OTHER): 2,
                          ("t", "q", ""): 1}
    assert m.exception_label.overflow == 2


def test_oldest_pending_age_from_the_index() -> None:
    state = RuntimeState(Settings())
    t = 1000.0

    def sent(uuid: str, at: float, queue: str = "q", **extra) -> None:
        state.apply("task-sent", {"uuid": uuid, "name": "n", "queue": queue,
                                  "timestamp": at, **extra})

    sent("a", t)
    sent("b", t + 5)
    sent("later", t - 100, queue="e", eta="2030-01-01T00:00:00")  # waits on purpose
    assert state.oldest_pending_ages(t + 10) == {"q": 10.0, "e": 0.0}
    state.apply("task-received", {"uuid": "a", "hostname": "w@h", "timestamp": t + 6})
    assert state.oldest_pending_ages(t + 10) == {"q": 5.0, "e": 0.0}
    state.apply("task-received", {"uuid": "b", "hostname": "w@h", "timestamp": t + 7})
    assert state.oldest_pending_ages(t + 10) == {"q": 0.0, "e": 0.0}
    sent("c", t + 20)  # a producer clock ahead of ours: clamped at 0
    assert state.oldest_pending_ages(t + 10) == {"q": 0.0, "e": 0.0}


def test_every_failure_of_one_task_counted_by_class_through_the_engine() -> None:
    """The engine's task listener caches label keys per (task, queue) after the first
    event; failures taking that cached path are counted by class all the same."""
    eng = _engine()
    t = time.time()
    for i in range(5):
        _kill(eng, f"k{i}", t + i)
    plain = {"exception": "ValueError('bad')", "traceback": "..."}
    for i in range(3):
        _kill(eng, f"v{i}", t + 10 + i, plain)
    assert eng.metrics.failures == {("proj.hog", "q", "WorkerLostError"): 5,
                                    ("proj.hog", "q", "ValueError"): 3}
    assert eng.metrics.task_events[("failed", "proj.hog", "q")] == 8
