"""Task rules fed real-shaped Celery events through the real Engine (no broker needed),
plus the parsers the hooks use, fuzzed for garbage and huge input."""

from __future__ import annotations

import json
import time

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.probes.results import KEY_PREFIX, ResultStore
from flower_practices.rules.orm_object_argument import find_models
from flower_practices.rules.retry_storm import eta_timestamp
from flower_practices.rules.retryless_failure import (
    TRANSIENT_EXCEPTIONS,
    TransientMatcher,
    exception_class,
)
from tests.support.exporter import wait_for
from tests.test_blind_window_units import corrected


def engine(**kw) -> Engine:
    practices = kw.pop("practices", {})
    return Engine(Settings(practices=practices), broker_url="redis://x/0", **kw)


def task_events(uuid: str, name: str, t0: float, host: str = "w1@h") -> list[dict]:
    return [
        {"type": "task-sent", "uuid": uuid, "name": name, "queue": "q", "timestamp": t0},
        {"type": "task-received", "uuid": uuid, "name": name, "hostname": host,
         "timestamp": t0, "retries": 0},
        {"type": "task-started", "uuid": uuid, "hostname": host, "timestamp": t0},
    ]


# -- parsers ----------------------------------------------------------------------------------
def test_exception_class_reads_only_the_class_name() -> None:
    assert exception_class("ConnectionError('secret host 10.0.0.1')") == "ConnectionError"
    assert exception_class("redis.exceptions.ConnectionError('x')") == \
        "redis.exceptions.ConnectionError"
    assert exception_class("timeout('timed out')") == "timeout"
    assert exception_class("OperationalError") == "OperationalError"
    for bad in (None, 3, "", "((((", "   ", "'quoted'"):
        assert exception_class(bad) is None
    assert len(exception_class("A" * 100_000) or "") <= 200


def test_transient_matcher_matches_bare_and_dotted_names() -> None:
    match = TransientMatcher(TRANSIENT_EXCEPTIONS)
    for name in ("ConnectionError", "redis.exceptions.ConnectionError", "timeout",
                 "socket.timeout", "OperationalError", "psycopg2.OperationalError",
                 "kombu.exceptions.OperationalError", "ReadTimeout"):
        assert match(name), name
    for name in ("ValueError", "KeyError", "IntegrityError", "myapp.Timeoutish"):
        assert not match(name), name


def test_eta_timestamp() -> None:
    assert eta_timestamp("2026-01-01T00:00:00+00:00") == 1767225600.0
    assert eta_timestamp("2026-01-01T00:00:00") == 1767225600.0  # naive: UTC
    for bad in (None, 5, "", "tomorrow", "9" * 1000, "2026-13-45T99:00:00"):
        assert eta_timestamp(bad) is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="<>()[]{},:'\"\\ =.0xaAbUser_", max_size=3000), st.booleans())
def test_find_models_survives_garbage(text: str, keyword: bool) -> None:
    found = find_models(text, 4096, keyword)
    assert len(found) <= 20
    for where, cls in found:
        assert cls.replace("_", "a").replace(".", "a").isalnum()
        assert len(where) <= 64


def test_find_models_ignores_string_literals_and_caps_length() -> None:
    assert find_models("('<User: in a string>', \"<Order object at 0x1>\")", 4096, False) == []
    huge = "(" + "1, " * 200_000 + "<User: late>)"
    assert find_models(huge, 4096, False) == []  # beyond max_scan_chars: not scanned
    assert find_models("(<User: x>,)", 4096, False) == [("0", "User")]


# -- missing_time_limit without the app ------------------------------------------------------
def test_missing_time_limit_without_app_says_unknown() -> None:
    eng = engine(practices={"missing_time_limit": {"max_runtime_seconds": 10}})
    now = time.time()
    for ev in task_events("u1", "proj.long", now - 60):
        eng.observe(ev)
    eng.observe({"type": "worker-heartbeat", "hostname": "w1@h", "timestamp": now,
                 "freq": 2.0})
    eng.evaluate(now)
    [f] = eng.practices_payload()["findings"]
    assert f["practice"] == "missing_time_limit" and f["task"] == "proj.long"
    assert f["evidence"]["time_limit"] == "time limit unknown (app not loaded)"
    assert f["evidence"]["running_now_over_limit"] == 1


def test_missing_time_limit_skips_runs_stopped_by_their_own_limit() -> None:
    """A per-call (or worker command line) limit is in no event; a run that failed by it
    proves it had one. Any other failure, or a success, over the limit is still found."""
    eng = engine(practices={"missing_time_limit": {"max_runtime_seconds": 10,
                                                   "clear_after_seconds": 0}})
    now = time.time()
    failures = {"u1": "TimeLimitExceeded(60.0)",
                "u2": "SoftTimeLimitExceeded('SoftTimeLimitExceeded(60.0,)')",
                "u3": "ValueError('x')"}
    for uuid, exc in failures.items():
        for ev in task_events(uuid, "proj.long", now - 60):
            eng.observe(ev)
        eng.observe({"type": "task-failed", "uuid": uuid, "hostname": "w1@h",
                     "timestamp": now, "exception": exc, "runtime": 60.0})
    eng.evaluate(now)
    [f] = eng.practices_payload()["findings"]
    assert f["practice"] == "missing_time_limit" and f["task"] == "proj.long"
    assert f["evidence"]["completed_runs_over_limit"] == 1
    assert f["count"] == 1


# -- orm_object_argument: one message, one count, whatever the event order ------------------
def test_orm_object_argument_counts_a_message_once_in_either_event_order() -> None:
    """task-sent (the producer) and task-received (the worker) come from two publishers
    with no order between them; a busy producer's task-sent can arrive second."""
    eng = engine()
    now = time.time()
    args = "(<User: bob>,)"
    sent = {"type": "task-sent", "uuid": "s1", "name": "proj.mail", "queue": "q",
            "timestamp": now, "args": args, "kwargs": "{}"}
    received = {"type": "task-received", "uuid": "s1", "name": "proj.mail",
                "hostname": "w1@h", "timestamp": now, "args": args, "kwargs": "{}"}
    eng.observe(dict(sent))
    eng.observe(dict(received))  # in order
    eng.observe(dict(received, uuid="r2"))
    eng.observe(dict(sent, uuid="r2"))  # reordered: the same message, not a second one
    eng.observe(dict(sent, uuid="r3"))  # its worker's events not (yet) in
    eng.observe(dict(received, uuid="r4"))  # sent events off for this one
    eng.evaluate(now)
    found = eng.practices_payload()["findings"]
    assert {(f["practice"], f["task"]) for f in found} == {("orm_object_argument",
                                                           "proj.mail")}
    # a task-received alone does not name the queue: two findings, four messages in all
    assert sorted(f["evidence"]["messages"] for f in found) == [2, 2]


# -- lost_task: worker-offline and restart paths ---------------------------------------------
def test_lost_task_after_worker_offline_grace_and_cleared_by_late_completion() -> None:
    eng = engine(practices={"lost_task": {"offline_grace_seconds": 30},
                            "missing_time_limit": {"max_runtime_seconds": 10}})
    now = time.time()
    eng.observe({"type": "worker-online", "hostname": "w1@h", "timestamp": now - 100})
    for ev in task_events("u1", "proj.job", now - 50):
        eng.observe(ev)
    eng.observe({"type": "worker-offline", "hostname": "w1@h", "timestamp": now - 40,
                 "local_received": now - 40})
    eng.evaluate(now - 20)  # within the offline grace: a warm shutdown may still finish it
    assert eng.practices_payload()["findings"] == []
    eng.evaluate(now)
    # only lost_task: a task on a dead worker is not reported as a long run
    [f] = eng.practices_payload()["findings"]
    assert f["practice"] == "lost_task" and f["worker"] == "w1@h"
    assert f["evidence"]["reasons"] == ["worker-offline event"]
    rule = next(r for r in eng.rules if r.id == "lost_task")
    eng.observe({"type": "task-succeeded", "uuid": "u1", "hostname": "w1@h",
                 "timestamp": now, "runtime": 50.0})
    assert "u1" not in eng.state.tasks  # forgotten at its terminal event
    eng.evaluate(now + 1)  # the late completion is seen at the next evaluation
    assert len(rule.lost) == 0


def test_lost_task_when_worker_restarted_under_it() -> None:
    eng = engine()
    now = time.time()
    eng.observe({"type": "worker-online", "hostname": "w1@h", "timestamp": now - 100})
    for ev in task_events("u2", "proj.job", now - 50):
        eng.observe(ev)
    eng.observe({"type": "worker-online", "hostname": "w1@h", "timestamp": now - 10})
    eng.evaluate(now)
    [f] = eng.practices_payload()["findings"]
    assert f["evidence"]["reasons"] == ["worker restarted after the task started"]


def _worker_ev(etype: str, ts: float, pid: int | None = 7, active: int = 1,
               processed: int = 3) -> dict:
    ev = {"type": etype, "hostname": "w1@h", "timestamp": ts, "local_received": ts,
          "freq": 2.0, "active": active, "processed": processed}
    if pid is not None:
        ev["pid"] = pid
    return ev


def _reconnect_case(online: dict, *, restart_before: bool = False) -> Engine:
    """A task runs on w1@h (pid 7, 3 processed); the worker goes offline and ``online``
    follows (as Celery's consumer does around a broker reconnect, or a new process);
    heartbeats like ``online`` keep it alive; evaluated well past every grace."""
    eng = engine(practices={"lost_task": {"offline_grace_seconds": 5, "grace_seconds": 2}})
    t0 = time.time() - 100
    eng.observe(_worker_ev("worker-online", t0, active=0))
    for ev in task_events("u3", "proj.job", t0 + 1):
        eng.observe(ev)
    if restart_before:  # a real restart first: the run is orphaned by it
        eng.observe(_worker_ev("worker-online", t0 + 2, pid=8, active=0, processed=0))
    eng.observe(_worker_ev("worker-offline", t0 + 10, pid=online.get("pid")))
    eng.observe(online)
    for k in range(1, 40):
        beat = {**online, "type": "worker-heartbeat", "timestamp": t0 + 10 + k,
                "local_received": t0 + 10 + k}
        eng.observe(beat)
    eng.evaluate(t0 + 50)
    return eng


def test_a_consumer_reconnect_is_no_restart_but_a_new_process_is() -> None:
    """worker-offline then worker-online from the same process (same pid, processed not
    reset) with tasks still running is Celery's consumer reconnecting after a broker
    restart: the run goes on, no lost_task. A new process under the same name (another
    pid, processed reset, nothing running, or no worker-online heard) is a restart: the
    run is lost."""
    same = _worker_ev("worker-online", time.time() - 90)
    eng = _reconnect_case(same)
    assert [f["practice"] for f in eng.practices_payload()["findings"]] == []
    worker = eng.state.workers["w1@h"]
    assert list(worker.running_tasks) == ["u3"] and not worker.orphans
    assert eng.state.reconnects == 1
    assert corrected(eng, "reconnect_kept") == 1 and corrected(eng, "reserved_unheard") == 0
    # must fire: its heartbeats then stop -- the run is lost with it
    eng.evaluate(time.time())
    [f] = eng.practices_payload()["findings"]
    assert f["practice"] == "lost_task"
    assert f["evidence"]["reasons"] == ["heartbeats expired"]

    for online in (_worker_ev("worker-online", time.time() - 90, pid=8),  # another pid
                   _worker_ev("worker-online", time.time() - 90, processed=0),  # reset
                   _worker_ev("worker-online", time.time() - 90, active=0),  # idle
                   _worker_ev("worker-online", time.time() - 90, pid=None),  # unknown
                   # its worker-online missed: a heartbeat after worker-offline may be a
                   # new process's (containers reuse pid 1), so it is not believed
                   _worker_ev("worker-heartbeat", time.time() - 90)):
        eng = _reconnect_case(online)
        [f] = eng.practices_payload()["findings"]
        assert f["practice"] == "lost_task", online
        assert f["evidence"]["reasons"] == ["worker restarted after the task started"]
        assert eng.state.reconnects == 0 and corrected(eng, "reconnect_kept") == 0

    # a run orphaned by an earlier real restart is not taken back by a later reconnect
    eng = _reconnect_case(_worker_ev("worker-online", time.time() - 90, pid=8,
                                     processed=0), restart_before=True)
    [f] = eng.practices_payload()["findings"]
    assert f["evidence"]["reasons"] == ["worker restarted after the task started"]


# -- unread_results coverage ------------------------------------------------------------------
def test_unread_results_coverage_without_redis_backend() -> None:
    assert engine().coverage()["unread_results"].startswith(
        "unsupported: no result backend")
    cov = engine(result_backend="db+postgresql://127.0.0.1/test").coverage()
    assert cov["unread_results"] == ("unsupported: result backend 'db' is not Redis "
                                     "(OBJECT IDLETIME is Redis-only)")


def test_unread_results_unsupported_under_lfu_policy(private_redis: dict) -> None:
    url = private_redis["url"]
    redis.Redis.from_url(url).config_set("maxmemory-policy", "allkeys-lfu")
    eng = engine(result_backend=url, results=ResultStore.from_url(url))
    assert eng.coverage()["unread_results"] == "active"
    eng.evaluate()
    cov = eng.coverage()["unread_results"]
    assert cov.startswith("unsupported: Redis maxmemory-policy is allkeys-lfu"), cov
    json.dumps(eng.practices_payload())


@pytest.mark.parametrize("denied", ["object", "pubsub"])
def test_unread_results_says_when_redis_refuses_its_checks(private_redis: dict,
                                                           denied: str) -> None:
    """A managed Redis whose ACL (or renamed commands) refuses ``OBJECT`` or ``PUBSUB``:
    every check gets an error reply. The rule is blind then, and says so in its coverage
    (with Redis' reason), counts a probe error, and is active again once allowed."""
    url = private_redis["url"]
    admin = redis.Redis.from_url(url)
    admin.acl_setuser("fp-monitor", enabled=True, passwords=["+fp-secret"], keys=["*"],
                      channels=["*"], commands=["+@all", f"-{denied}"])
    limited = url.replace("redis://", "redis://fp-monitor:fp-secret@")
    eng = engine(result_backend=url, results=ResultStore.from_url(limited),
                 practices={"unread_results": {"grace_seconds": 0.0,
                                               "error_backoff_seconds": 0.1}})
    rule = next(r for r in eng.rules if r.id == "unread_results")
    assert eng.coverage()["unread_results"] == "active"
    admin.set(KEY_PREFIX + "u5", b"{}")
    now = time.time()
    for ev in task_events("u5", "proj.calc", now - 5):
        eng.observe(ev)
    eng.observe({"type": "task-succeeded", "uuid": "u5", "hostname": "w1@h",
                 "timestamp": now - 5})
    eng.evaluate(now)
    cov = eng.coverage()["unread_results"]
    assert cov.startswith("unsupported: the result backend's Redis refuses the checks ("), cov
    assert "NOPERM" in cov or "no permissions" in cov, cov
    assert eng.probe_errors == {"result_backend": 1}
    assert eng.rule_errors.get("unread_results") is None
    assert len(rule.pending) == 1 and rule.checked == 0  # kept for later
    admin.acl_setuser("fp-monitor", commands=[f"+{denied}"])
    wait_for(lambda: time.time() > rule._retry_at, timeout=5, interval=0.02,
             message="the back-off to pass")
    eng.evaluate(time.time())
    assert eng.coverage()["unread_results"] == "active"
    assert rule.checked == 1 and not rule.pending


def test_unread_results_backs_off_when_redis_is_down(private_redis: dict) -> None:
    url = private_redis["url"]
    eng = engine(result_backend=url, results=ResultStore.from_url(url),
                 practices={"unread_results": {"grace_seconds": 0.0}})
    now = time.time()
    for ev in task_events("u3", "proj.calc", now - 5):
        eng.observe(ev)
    eng.observe({"type": "task-succeeded", "uuid": "u3", "hostname": "w1@h",
                 "timestamp": now - 5})
    eng.evaluate(now)  # policy checked, the id checked: key absent -> no verdict
    rule = next(r for r in eng.rules if r.id == "unread_results")
    assert rule.checked == 0 and not rule.pending
    for ev in task_events("u4", "proj.calc", now - 5):
        eng.observe(ev)
    eng.observe({"type": "task-succeeded", "uuid": "u4", "hostname": "w1@h",
                 "timestamp": now - 5})
    private_redis["kill"]()
    eng.evaluate(now)  # connection refused: logged, kept for later, no exception
    assert eng.rule_errors.get("unread_results") is None
    assert len(rule.pending) == 1 and rule._retry_at > time.time()
