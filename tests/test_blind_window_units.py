"""Blind windows judged through the real Engine (no broker needed): while the event stream
is down nothing is silent, after it is back only the time heard counts, and what was
overdue before the window still is. The real-worker test is
tests/test_blind_window_workload.py."""

from __future__ import annotations

import math
import time

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.events.status import CLOCK_DRIFT_SECONDS, Hearing, StreamStatus
from flower_practices.metrics import PracticesCollector
from flower_practices.rules.missed_periodic_task import MissedPeriodicTask


def blind(e: Engine, deaf_from: float, back_at: float | None) -> None:
    """The stream went down at ``deaf_from`` and (unless None) came back at ``back_at``
    -- through StreamStatus, as the consumers report it, with the times set."""
    status = e.stream_status
    status.mark_disconnected("test outage")
    e.state.hearing.deaf_from = deaf_from
    if back_at is not None:
        status.mark_connected()
        e.state.hearing.reconnected(back_at)


def connected(t: float) -> Engine:
    e = Engine(Settings(practices={"missed_periodic_task": {"grace_seconds": 2.0},
                                   "queue_starvation": {"max_wait_seconds": 10.0,
                                                        "min_samples": 1000}}),
               broker_url="redis://x/0")
    e.stream_status.begin()
    e.stream_status.mark_connected()
    e.state.hearing.since = t
    return e


def corrected(e: Engine, kind: str) -> float:
    """``flower_practices_state_corrections_total{kind}`` as the collector exposes it
    (an AssertionError when the sample is missing, never a default)."""
    (value,) = [s.value for fam in PracticesCollector(e).collect()
                if fam.name == "flower_practices_state_corrections"
                for s in fam.samples if s.labels == {"kind": kind}]
    return value


def findings(e: Engine, practice: str) -> list:
    return [f for f in e.findings.active() if f.practice == practice]


def test_stream_status_keeps_one_blind_window_per_outage() -> None:
    status = StreamStatus()
    hearing = status.hearing
    assert not hearing.deaf and hearing.heard_from(5.0, 10.0) == 5.0  # fed directly
    status.begin()
    assert hearing.deaf
    status.mark_connected()
    first = hearing.since
    assert not hearing.deaf and hearing.unsure_before == 0.0  # nothing heard before it
    status.mark_connected()  # said again while connected: no window
    assert hearing.since == first and hearing.unsure_before == 0.0
    status.mark_disconnected("lost")
    deaf_from = hearing.deaf_from
    assert hearing.deaf and deaf_from > 0
    status.mark_disconnected("attempt failed")  # another attempt: the same window
    assert hearing.deaf_from == deaf_from
    status.mark_connected()
    assert hearing.since == status.connected_since
    assert hearing.unsure_before == max(deaf_from, hearing.since - CLOCK_DRIFT_SECONDS)


def test_heard_from_counts_only_silence_heard() -> None:
    h = Hearing()
    h.deaf_from, h.since = 100.0, math.inf
    assert h.heard_from(95.0, 10.0) == math.inf  # alive when it went down: unknown now
    assert h.heard_from(80.0, 10.0) == 80.0  # already silent for the threshold then
    h.since = 130.0
    assert h.heard_from(95.0, 10.0) == 130.0  # silence counts from the return
    assert h.heard_from(135.0, 10.0) == 135.0  # heard after it
    assert h.heard_from(80.0, 10.0) == 80.0


def test_workers_are_not_dead_for_what_was_not_heard() -> None:
    t0 = time.time() - 300
    e = connected(t0 - 100)
    for i in range(0, 20, 2):
        e.observe({"type": "worker-heartbeat", "hostname": "w1@h", "freq": 2.0, "active": 0,
                   "timestamp": t0 + i, "local_received": t0 + i})
    # a second worker, dead long before the window
    e.observe({"type": "worker-heartbeat", "hostname": "w2@h", "freq": 2.0, "active": 0,
               "timestamp": t0 - 60, "local_received": t0 - 60})
    w1, w2 = e.state.workers["w1@h"], e.state.workers["w2@h"]
    blind(e, t0 + 19, None)
    assert w1.alive(t0 + 100) and not w2.alive(t0 + 100)
    e.state.hearing.reconnected(t0 + 150)
    assert w1.alive(t0 + 153)  # 3 s after the return: not yet expired (2 x freq)
    assert not w1.alive(t0 + 155)  # unheard for 5 s after the return: gone
    assert not w2.alive(t0 + 153)


def test_a_periodic_run_due_while_blind_is_not_missed_and_a_dead_beat_still_is() -> None:
    t0 = time.time() - 400
    e = connected(t0 - 10)
    rule = next(r for r in e.rules if isinstance(r, MissedPeriodicTask))
    rule.tracker.started = t0 - 10
    for k in range(8):  # every 10 s, learned
        e.observe({"type": "task-sent", "uuid": f"tick-{k}", "name": "p.tick", "queue": "celery",
                   "hostname": "gen1@beat", "timestamp": t0 + 10 * k, "retries": 0})
    # down from +75 to +120: the runs due at +80 .. +110 went unheard
    blind(e, t0 + 75, None)
    e.evaluate(t0 + 100)
    assert not findings(e, "missed_periodic_task")
    blind(e, t0 + 75, t0 + 120)
    e.evaluate(t0 + 125)  # +80 due, +2 grace, long past: but it may have been sent unheard
    assert not findings(e, "missed_periodic_task")
    e.evaluate(t0 + 131)  # the first run due after the return (+130) has 2 s grace
    assert not findings(e, "missed_periodic_task")
    e.evaluate(t0 + 133)  # nothing sent since the return: beat is down
    (f,) = findings(e, "missed_periodic_task")
    assert f.task == "p.tick"


def test_a_periodic_task_overdue_before_the_window_stays_overdue() -> None:
    t0 = time.time() - 400
    e = connected(t0 - 10)
    rule = next(r for r in e.rules if isinstance(r, MissedPeriodicTask))
    rule.tracker.started = t0 - 10
    for k in range(8):
        e.observe({"type": "task-sent", "uuid": f"tick-{k}", "name": "p.tick", "queue": "celery",
                   "hostname": "gen1@beat", "timestamp": t0 + 10 * k, "retries": 0})
    e.evaluate(t0 + 100)  # due at +80: overdue
    assert findings(e, "missed_periodic_task")
    blind(e, t0 + 105, t0 + 150)
    e.evaluate(t0 + 151)
    (f,) = findings(e, "missed_periodic_task")
    assert f.evidence["due_at"] == round(t0 + 80, 3)


def test_tasks_that_may_have_started_unheard_are_not_a_starved_queue() -> None:
    t0 = time.time() - 400
    e = connected(t0 - 10)
    e.state.queue("work").length = 5

    def send(uuid: str, at: float) -> None:
        e.observe({"type": "task-sent", "uuid": uuid, "name": "t.work", "queue": "work",
                   "hostname": "web@h", "timestamp": at, "retries": 0, "local_received": at})

    def beat(until: float, start: float) -> None:  # a live worker consuming the queue
        at = start
        while at <= until:
            e.observe({"type": "worker-heartbeat", "hostname": "w1@h", "freq": 2.0,
                       "active": 1, "timestamp": at, "local_received": at})
            at += 2.0

    beat(t0 + 5, t0)
    e.state.probed_worker("w1@h", ("work",), 1, 1)
    for k in range(5):
        send(f"old-{k}", t0 + k)
    blind(e, t0 + 6, t0 + 60)  # they may have started while the stream was down
    beat(t0 + 80, t0 + 60)
    e.evaluate(t0 + 80)
    assert not findings(e, "queue_starvation")
    assert e.view(t0 + 80).queue_oldest_age.get("work", 0.0) == 0.0
    assert not e.state.queues["work"].pending  # dropped from the index, each once
    # must fire: a task sent after the return waits past max_wait
    send("new-1", t0 + 81)
    beat(t0 + 95, t0 + 82)
    e.evaluate(t0 + 95)
    (f,) = findings(e, "queue_starvation")
    assert f.queue == "work"
    assert f.evidence["oldest_waiting_seconds"] >= 10.0


class _Pool:
    """Two live workers consuming queue 'work' (pool size 1, prefetch 4): ``busy@h`` and
    its idle peer ``idle@h``, fed through the real Engine."""

    def __init__(self, e: Engine) -> None:
        self.e = e
        for host in ("busy@h", "idle@h"):
            e.state.probed_worker(host, ("work",), 4, 1)

    def beat(self, start: float, until: float) -> None:
        """Heartbeats of both (the busy one runs a task throughout)."""
        at = start
        while at <= until:
            for host, active in (("busy@h", 1), ("idle@h", 0)):
                self.e.observe({"type": "worker-heartbeat", "hostname": host, "freq": 2.0,
                                "active": active, "timestamp": at, "local_received": at})
            at += 2.0

    def task(self, etype: str, uuid: str, at: float) -> None:
        extra = {"queue": "work", "retries": 0} if etype == "task-sent" else {}
        self.e.observe({"type": etype, "uuid": uuid, "name": "t.work",
                        "hostname": "web@h" if etype == "task-sent" else "busy@h",
                        "timestamp": at, "local_received": at, **extra})

    def receive(self, uuid: str, at: float) -> None:
        self.task("task-sent", uuid, at - 0.1)
        self.task("task-received", uuid, at)

    def reserved_gauge(self, at: float) -> tuple[float, int]:
        """(celery_queue_reserved_tasks{queue="work"}, celery_worker_tasks_reserved of
        the busy worker), as the exposition reads them."""
        view = self.e.view(at)
        return view.queue_reserved.get("work", 0), view.workers_busy["busy@h"][0]


def _two_reserved_behind_a_long_run(t0: float) -> tuple[Engine, _Pool]:
    """busy@h runs 'long' from t0 and has 'r1' and 'r2' prefetched behind it."""
    e = connected(t0 - 10)
    pool = _Pool(e)
    pool.beat(t0, t0 + 4)
    pool.receive("long", t0)
    pool.task("task-started", "long", t0 + 0.5)
    for uuid in ("r1", "r2"):
        pool.receive(uuid, t0 + 1)
    return e, pool


def test_tasks_reserved_before_a_blind_window_are_no_prefetch_starvation() -> None:
    t0 = time.time() - 400
    e, pool = _two_reserved_behind_a_long_run(t0)
    e.evaluate(t0 + 4)
    assert pool.reserved_gauge(t0 + 4) == (2, 2)
    # down from +5 to +60: 'long', 'r1' and 'r2' ran and ended unheard; the busy worker
    # runs another task it took meanwhile (its heartbeats say active=1 throughout)
    blind(e, t0 + 5, t0 + 60)
    pool.beat(t0 + 60, t0 + 100)
    e.evaluate(t0 + 100)  # r1/r2 "reserved" for 99 s, the peer idle for 100 s
    assert not findings(e, "prefetch_starvation")
    assert pool.reserved_gauge(t0 + 100) == (0, 0)
    assert e.state.reserved_unheard == 2 and corrected(e, "reserved_unheard") == 2
    # must fire: tasks heard received after the return wait reserved on the busy worker
    pool.task("task-started", "n0", t0 + 103)
    pool.receive("n1", t0 + 104)
    assert pool.reserved_gauge(t0 + 105) == (1, 1)
    # the next event of a task let go finds it, and uncounts nothing of the new ones
    pool.task("task-started", "r1", t0 + 106)
    pool.task("task-succeeded", "r1", t0 + 107)
    assert pool.reserved_gauge(t0 + 107) == (1, 1)
    assert "r1" not in e.state.workers["busy@h"].running_tasks
    pool.beat(t0 + 102, t0 + 140)
    e.evaluate(t0 + 140)
    (f,) = findings(e, "prefetch_starvation")
    assert (f.queue, f.worker) == ("work", "busy@h")
    assert f.evidence["reserved_waiting"] == 1
    assert f.evidence["idle_workers"] == ["idle@h"]


def test_a_task_reserved_right_after_the_return_is_counted() -> None:
    """No evaluation or scrape between the return and the next task-received: the
    records from before the window go, the one heard after it stays."""
    t0 = time.time() - 400
    e, pool = _two_reserved_behind_a_long_run(t0)
    blind(e, t0 + 5, t0 + 60)
    pool.task("task-started", "n0", t0 + 60.5)
    pool.receive("n1", t0 + 61)
    pool.beat(t0 + 60, t0 + 100)
    e.evaluate(t0 + 100)
    (f,) = findings(e, "prefetch_starvation")
    assert f.evidence["reserved_waiting"] == 1
    assert pool.reserved_gauge(t0 + 100) == (1, 1)
    # a second window lets n1 go too
    blind(e, t0 + 101, t0 + 120)
    assert pool.reserved_gauge(t0 + 120) == (0, 0)
    assert e.state.reserved_unheard == 3 and corrected(e, "reserved_unheard") == 3
