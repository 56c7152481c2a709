"""``celery_queue_reserved_tasks``: tasks received by live workers but not started, per
queue, kept by a per-(worker, queue) counter on every transition (received, started,
terminal, retried, lost, evicted, worker restart/offline), never by a scan. The real
:class:`Engine` is fed real-shaped events on a synthetic clock; the real-worker test is
tests/test_rabbitmq_broker.py."""

from __future__ import annotations

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.metrics import PracticesCollector

T0 = 1_700_000_000.0
H1, H2 = "w1@h", "w2@h"


def engine(**settings) -> Engine:
    return Engine(Settings(practices={}, **settings), broker_url="redis://x/0")


def ev(etype: str, t: float, **fields) -> dict:
    return {"type": etype, "timestamp": t, **fields}


def beat(host: str, t: float) -> dict:
    return ev("worker-heartbeat", t, hostname=host, freq=2.0, active=0)


def sent(uuid: str, t: float, queue: str) -> dict:
    return ev("task-sent", t, uuid=uuid, name="proj.job", queue=queue, hostname="c@h")


def received(uuid: str, t: float, host: str = H1) -> dict:
    return ev("task-received", t, uuid=uuid, name="proj.job", hostname=host, retries=0)


def feed(eng: Engine, *events: dict) -> None:
    for event in events:
        eng.observe(event)


def reserved(eng: Engine, now: float) -> dict[str, int]:
    return {q.name: n for q, n in eng.state.reserved_by_queue(now).items() if n}


def exported(eng: Engine) -> dict[str, float]:
    for fam in PracticesCollector(eng).collect():
        if fam.name == "celery_queue_reserved_tasks":
            return {s.labels["queue"]: s.value for s in fam.samples}
    raise AssertionError("celery_queue_reserved_tasks not exported")


def test_received_counts_per_queue_until_started_or_finished() -> None:
    eng = engine()
    feed(eng, beat(H1, T0), beat(H2, T0))
    for i in range(3):
        feed(eng, sent(f"a{i}", T0, "high"), received(f"a{i}", T0))
    feed(eng, sent("b0", T0, "bulk"), received("b0", T0, H2))
    assert reserved(eng, T0 + 1) == {"high": 3, "bulk": 1}
    feed(eng, ev("task-started", T0 + 1, uuid="a0", hostname=H1),
         ev("task-revoked", T0 + 1, uuid="a1", hostname=H1),
         ev("task-succeeded", T0 + 1, uuid="b0", hostname=H2, runtime=0.1))
    assert reserved(eng, T0 + 1) == {"high": 1}
    feed(eng, ev("task-retried", T0 + 2, uuid="a2", hostname=H1))
    assert reserved(eng, T0 + 2) == {}
    assert exported(eng) == {"high": 0, "bulk": 0}  # known queues, at 0


def test_worker_restart_or_death_drops_its_reserved_tasks() -> None:
    eng = engine()
    feed(eng, beat(H1, T0), beat(H2, T0), sent("u1", T0, "q"), received("u1", T0),
         sent("u2", T0, "q"), received("u2", T0, H2))
    assert reserved(eng, T0) == {"q": 2}
    feed(eng, ev("worker-online", T0 + 1, hostname=H1))  # restarted: its prefetch is gone
    assert reserved(eng, T0 + 1) == {"q": 1}
    # a late event of the old generation does not take the new count below zero
    feed(eng, ev("task-started", T0 + 2, uuid="u1", hostname=H1))
    assert reserved(eng, T0 + 2) == {"q": 1}
    # H2 stops beating: a dead worker's prefetch is not a backlog anyone will run
    feed(eng, beat(H1, T0 + 60))
    assert reserved(eng, T0 + 60) == {}
    assert exported(eng) == {"q": 0}


def test_received_before_sent_is_counted_once_its_queue_is_known() -> None:
    eng = engine()
    feed(eng, beat(H1, T0), received("u1", T0))
    assert reserved(eng, T0) == {}
    feed(eng, sent("u1", T0, "late"))
    assert reserved(eng, T0) == {"late": 1}
    feed(eng, sent("u1", T0, "late"))  # a duplicate task-sent does not count it twice
    assert reserved(eng, T0) == {"late": 1}
    feed(eng, ev("task-started", T0 + 1, uuid="u1", hostname=H1))
    assert reserved(eng, T0 + 1) == {}


def test_lost_and_evicted_records_release_their_queue_count() -> None:
    eng = engine(max_tracked_tasks=2)
    feed(eng, beat(H1, T0), sent("u1", T0, "q"), received("u1", T0))
    assert reserved(eng, T0) == {"q": 1}
    eng.state.mark_lost(eng.state.tasks["u1"], T0 + 1)
    assert reserved(eng, T0 + 1) == {}
    feed(eng, sent("u2", T0 + 1, "q"), received("u2", T0 + 1),
         sent("u3", T0 + 1, "r"), sent("u4", T0 + 1, "r"))  # u2 evicted by the LRU cap
    assert "u2" not in eng.state.tasks
    assert reserved(eng, T0 + 1) == {}
