"""Evaluation does its I/O outside the engine lock, and findings clear when they should.

Real Redis throughout: result keys are real keys whose idle time is set with
``RESTORE ... IDLETIME`` (no waiting), and a "slow Redis" is a private redis-server
stopped with SIGSTOP, so its replies never come until the test resumes it.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterable, Iterator

import pytest
import redis

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.findings import Condition
from flower_practices.probes.results import KEY_PREFIX, ResultStore
from flower_practices.rules.base import Rule
from flower_practices.rules.unread_results import UnreadResults

TASK = "proj.compute"
#: a safety bound for things that should happen at once; never a measured duration
LIVENESS = 30.0


def make_engine(url: str, store: ResultStore | None = None, *, clear_after: float = 30.0,
                **options: object) -> Engine:
    opts: dict = {"grace_seconds": 0.0, "min_samples": 5, "max_samples": 10, **options}
    settings = Settings(clear_after_seconds=clear_after,
                        practices={"unread_results": opts})
    return Engine(settings, broker_url="redis://x/0", result_backend=url,
                  results=store if store is not None else ResultStore.from_url(url),
                  rule_classes=[UnreadResults])


def rule_of(engine: Engine) -> UnreadResults:
    (rule,) = engine.rules
    assert isinstance(rule, UnreadResults)
    return rule


def succeed(engine: Engine, task_id: str, at: float, name: str = TASK) -> None:
    """The events of one task sent 10 s before it succeeded at ``at``, on queue q (long
    enough pending for a caller waiting on it to have been seen: with none seen, its
    result counts as unread, see unread_results' min_unread_evidence)."""
    for etype, ts in (("task-sent", at - 10), ("task-received", at - 10),
                      ("task-started", at - 1), ("task-succeeded", at)):
        engine.observe({"type": etype, "uuid": task_id, "name": name, "queue": "q",
                        "hostname": "w1@h", "timestamp": ts, "retries": 0})


def store_unread(client: redis.Redis, task_id: str, idle: int) -> None:
    """A result key written ``idle`` seconds ago and never read since."""
    client.set("fp-template", b'{"status": "SUCCESS", "result": 1}')
    payload = client.dump("fp-template")
    client.restore(KEY_PREFIX + task_id, 0, payload, replace=True, idletime=idle)


def unread_batch(engine: Engine, client: redis.Redis, n: int, now: float) -> None:
    for _ in range(n):
        task_id = uuid.uuid4().hex
        store_unread(client, task_id, 30)
        succeed(engine, task_id, now - 30)


def ids(engine: Engine) -> list[tuple]:
    return [(f.practice, f.task) for f in engine.findings.active()]


# -- defect 1: unread_results findings clear -------------------------------------------------
def test_unread_finding_clears_after_results_stop_being_stored(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    engine = make_engine(redis_url)
    now = time.time()
    unread_batch(engine, client, 6, now)
    engine.evaluate(now)
    assert ids(engine) == [("unread_results", TASK)]
    [finding] = engine.practices_payload()["findings"]
    assert finding["evidence"]["unread_results"] == 6

    # The advised fix: ignore_result=True, so the next results are never stored.
    for _ in range(6):
        succeed(engine, uuid.uuid4().hex, now - 30)
    engine.evaluate(now + 1)
    # The missing results displaced older verdicts: 4 left, below min_samples (5).
    assert rule_of(engine).verdict_counts(TASK, "q") == {"unread": 4, "read": 0,
                                                         "missing": 6}
    assert ids(engine) == [("unread_results", TASK)]  # false for 0 s < clear_after
    engine.evaluate(now + 1 + 30)
    assert ids(engine) == []


def test_unread_finding_clears_when_the_task_stops_running(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    engine = make_engine(redis_url)  # default window_seconds: 3600
    now = time.time()
    unread_batch(engine, client, 6, now)
    engine.evaluate(now)
    assert ids(engine) == [("unread_results", TASK)]
    engine.evaluate(now + 3599)  # verdicts still inside the window: condition holds
    assert ids(engine) == [("unread_results", TASK)]
    engine.evaluate(now + 3601)  # verdicts aged out: too few samples, condition false
    assert ids(engine) == [("unread_results", TASK)]
    assert rule_of(engine).verdicts == {}
    engine.evaluate(now + 3599 + 30)
    assert ids(engine) == []


def test_window_seconds_is_configurable(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    engine = make_engine(redis_url, clear_after=0.0, window_seconds=60.0)
    now = time.time()
    unread_batch(engine, client, 6, now)
    engine.evaluate(now)
    assert ids(engine) == [("unread_results", TASK)]
    engine.evaluate(now + 61)
    assert ids(engine) == []


def test_forgotten_result_is_not_counted_unread(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    engine = make_engine(redis_url)
    now = time.time()
    read_id, forgotten_id = uuid.uuid4().hex, uuid.uuid4().hex
    unread_batch(engine, client, 4, now)
    store_unread(client, read_id, 0)  # read just now
    succeed(engine, read_id, now - 30)
    succeed(engine, forgotten_id, now - 30)  # result.forget(): key deleted after reading
    engine.evaluate(now)
    assert rule_of(engine).verdict_counts(TASK, "q") == {"unread": 4, "read": 1,
                                                         "missing": 1}
    assert ids(engine) == []  # 5 judged, 4 unread: 80% < min_share
    # occurrences are counted while the task is reported: none here
    assert ("unread_results", "q", TASK) not in engine.metrics.violations_total


# -- defect 2: Redis I/O outside the engine lock ---------------------------------------------
class SignallingStore(ResultStore):
    """A real ResultStore that says when a Redis round trip starts."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.in_policy = threading.Event()
        self.in_idle_times = threading.Event()
        self.in_subscribed = threading.Event()

    def eviction_policy(self) -> str | None:
        self.in_policy.set()
        return super().eviction_policy()

    def idle_times(self, task_ids: list[str]) -> dict[str, int | None]:
        self.in_idle_times.set()
        return super().idle_times(task_ids)

    def idle_times_clocked(self, task_ids: list[str]):
        self.in_idle_times.set()
        return super().idle_times_clocked(task_ids)

    def subscribed(self, limit: int) -> tuple[set[str], bool]:
        self.in_subscribed.set()
        return super().subscribed(limit)


@pytest.fixture
def stopped_redis(private_redis: dict) -> Iterator[dict]:
    """The private redis-server; ``stop()`` freezes it (SIGSTOP) until teardown."""
    proc = private_redis["proc"]
    stopped = []

    def stop() -> None:
        proc.send_signal(signal.SIGSTOP)
        stopped.append(True)

    private_redis["stop"] = stop
    yield private_redis
    if stopped and proc.poll() is None:
        proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("stage", ["policy", "subscriptions"])
def test_observe_and_api_not_blocked_while_redis_hangs(stopped_redis: dict,
                                                       stage: str) -> None:
    url = stopped_redis["url"]
    # A long socket timeout: Redis stays silent until the test resumes it.
    store = SignallingStore(redis.Redis.from_url(url, socket_timeout=120,
                                                 socket_connect_timeout=120))
    engine = make_engine(url, store)
    rule = rule_of(engine)
    now = time.time()
    first = [uuid.uuid4().hex for _ in range(3)]
    for task_id in first:
        store_unread(redis.Redis.from_url(url), task_id, 30)
        succeed(engine, task_id, now - 30)
    entered = store.in_policy if stage == "policy" else store.in_subscribed
    if stage == "subscriptions":
        engine.evaluate(now - 60)  # checks the policy and subscriptions; nothing is due
        assert store.in_policy.is_set() and not store.in_idle_times.is_set()
        store.in_subscribed.clear()
    stopped_redis["stop"]()

    evaluated = threading.Event()

    def evaluate() -> None:
        engine.evaluate(now)
        evaluated.set()

    evaluator = threading.Thread(target=evaluate, daemon=True)
    evaluator.start()
    assert entered.wait(LIVENESS), "evaluation never reached Redis"

    served = threading.Event()
    payloads: list[dict] = []

    def serve() -> None:  # what the event consumer and the HTTP handler do meanwhile
        for _ in range(50):
            succeed(engine, uuid.uuid4().hex, now)
        payloads.append(engine.practices_payload())
        served.set()

    observer = threading.Thread(target=serve, daemon=True)
    observer.start()
    assert served.wait(LIVENESS), "observe()/practices_payload() blocked behind Redis"
    assert not evaluated.is_set()  # ...while the evaluation was still waiting on Redis
    assert len(rule.pending) == 50 + 3  # the due ones are taken after the snapshot
    assert payloads[0]["coverage"]["unread_results"] == "active"

    stopped_redis["proc"].send_signal(signal.SIGCONT)
    evaluator.join(LIVENESS)
    assert evaluated.is_set()
    if stage == "subscriptions":
        # the 3 stored results were judged unread; the 50 later ones have no key (missing)
        assert rule.checked == 3 and not rule.pending


def test_vanished_redis_is_a_counted_probe_error(private_redis: dict) -> None:
    url = private_redis["url"]
    engine = make_engine(url)
    now = time.time()
    succeed(engine, uuid.uuid4().hex, now - 30)
    private_redis["kill"]()
    engine.evaluate(now)
    assert engine.probe_errors == {"result_backend": 1}
    assert engine.rule_errors == {}
    assert len(rule_of(engine).pending) == 1  # kept for a later check
    engine.evaluate(now + 1)  # backing off: no new attempt, no new error
    assert engine.probe_errors == {"result_backend": 1}


# -- defect 3: a failing rule's findings still clear -----------------------------------------
class Flaky(Rule):
    """Holds a condition until it starts failing (in ``evaluate`` or ``prepare``)."""

    id = "lost_task"
    defaults: dict = {}
    fail_in: str | None = None

    def prepare(self, now: float, lock: object) -> None:
        if self.fail_in == "prepare":
            raise RuntimeError("bug")

    def evaluate(self, now: float) -> Iterable[Condition]:
        if self.fail_in == "evaluate":
            raise RuntimeError("bug")
        self.count(None, "t", worker="w@h")
        yield Condition(summary="lost", task="t", worker="w@h")


@pytest.mark.parametrize("phase", ["evaluate", "prepare"])
def test_findings_of_a_failing_rule_clear_after_clear_after(phase: str) -> None:
    engine = Engine(Settings(clear_after_seconds=30), rule_classes=[Flaky])
    rule = engine.rules[0]
    engine.evaluate(now=100)
    engine.evaluate(now=110)
    (finding,) = engine.findings.active()
    rule.fail_in = phase
    engine.evaluate(now=120)  # unknown, not false: kept as it was
    assert engine.findings.active() == [finding]
    assert (finding.last_seen, finding.count) == (110, 2)
    engine.evaluate(now=139)
    assert engine.findings.active() == [finding]
    engine.evaluate(now=140)  # last seen 30 s ago: cleared although the rule still fails
    assert engine.findings.active() == []
    assert engine.rule_errors == {"lost_task": 3}
    rule.fail_in = None
    engine.evaluate(now=150)
    assert len(engine.findings.active()) == 1


def test_tasks_first_seen_after_the_sampling_table_filled_are_sampled(redis_url: str) -> None:
    from flower_practices.rules.unread_results import _MAX_TASKS

    engine = make_engine(redis_url)
    rule = rule_of(engine)
    now = time.time()
    for i in range(_MAX_TASKS):
        succeed(engine, f"old-{i}", now, name=f"proj.old{i}")
    succeed(engine, "new-1", now, name="proj.new")
    assert "new-1" not in [p[0] for p in rule.pending]  # the table is full
    engine.evaluate(now)
    succeed(engine, "new-2", now, name="proj.new")
    assert "new-2" in [p[0] for p in rule.pending]
