"""Evaluation reads the state's indexes, never every tracked task.

The task table is swapped for one whose iteration raises: a rule that scanned it would
fail (counted in ``rule_errors``) and its finding would be missing. The scenario makes
the four rules that used to scan it fire: ``lost_task``, ``missing_time_limit``,
``queue_starvation`` and ``prefetch_starvation``.
"""

from __future__ import annotations

from collections import OrderedDict

from flower_practices.bounded import LRUDict
from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.probes.workers import WorkerSample

T0 = 1_700_000_000.0


class NoScan(LRUDict):
    """A task table that refuses to be iterated (lookups by id still work)."""

    def _refuse(self, *args: object) -> None:
        raise AssertionError("evaluation iterated every tracked task")

    __iter__ = values = items = keys = _refuse  # type: ignore[assignment]


def ev(etype: str, ts: float, **fields: object) -> dict:
    return {"type": etype, "timestamp": ts, "local_received": ts, **fields}


def beat(host: str, ts: float, active: int = 0) -> dict:
    """A heartbeat; ``active``: the tasks it runs, as Celery counts them (0 ends the runs
    that sent no outcome, as after ``Ignore``)."""
    return ev("worker-heartbeat", ts, hostname=host, freq=2.0, active=active, processed=0)


def test_rules_fire_without_iterating_the_task_table() -> None:
    engine = Engine(Settings(), broker_url="redis://localhost:6379/0")
    engine.state.tasks.__class__ = NoScan
    feed = engine.observe
    for host in ("busy@h", "idle@h", "gone@h"):
        feed(ev("worker-online", T0, hostname=host, freq=2.0))
    engine.apply_worker_probes({
        "busy@h": WorkerSample(("q",), prefetch=4, concurrency=1),
        "idle@h": WorkerSample(("q",), prefetch=4, concurrency=1),
        "gone@h": WorkerSample(("other",), prefetch=4, concurrency=1),
    })
    # a long run on busy@h, a task reserved behind it, tasks waiting in the queue
    for uuid, state in (("run", "started"), ("res", "received"), ("w1", "sent"),
                        ("w2", "sent")):
        feed(ev("task-sent", T0, uuid=uuid, name="proj.job", queue="q"))
        if state != "sent":
            feed(ev("task-received", T0, uuid=uuid, name="proj.job", hostname="busy@h"))
        if state == "started":
            feed(ev("task-started", T0 + 1, uuid=uuid, hostname="busy@h"))
    # a task started on gone@h, which then says goodbye
    feed(ev("task-sent", T0, uuid="lost", name="proj.other", queue="other"))
    feed(ev("task-received", T0, uuid="lost", name="proj.other", hostname="gone@h"))
    feed(ev("task-started", T0 + 1, uuid="lost", hostname="gone@h"))
    feed(ev("worker-offline", T0 + 2, hostname="gone@h"))
    for step in range(1, 40):
        t = T0 + 10.0 * step
        feed(beat("busy@h", t, active=1))
        feed(beat("idle@h", t))
        engine.evaluate(t)
    assert sum(engine.stream_status.decode_errors.values()) == 0
    assert engine.rule_errors == {}
    fired = {f.practice for f in engine.findings.active()}
    assert {"lost_task", "missing_time_limit", "queue_starvation",
            "prefetch_starvation"} <= fired, fired
    assert engine.state.tasks["run"].state == "STARTED"  # lookups by id still work


class CountingWorkers(OrderedDict):
    """The state's worker table, counting full passes over it."""

    passes = 0

    def values(self):  # type: ignore[override]
        CountingWorkers.passes += 1
        return super().values()


def test_pod_churn_starved_queue_evidence_names_live_workers_and_stays_per_round() -> None:
    """Pods that come and go leave thousands of (worker, queue) pairs and worker records:
    a starved queue's evidence names the live workers that took its tasks (not every pod
    of the window), and the consumers of many queues come from one pass over the workers
    per rule, not one pass per queue."""
    engine = Engine(Settings(), broker_url="redis://localhost:6379/0")
    feed = engine.observe
    n = 0
    t = T0
    # 300 s of churn: every second two new pods each run a task of 'fast' and 'other'
    for second in range(300):
        t = T0 + second
        for k in range(2):
            host = f"pod-{second}-{k}@h"
            feed(ev("worker-online", t, hostname=host, freq=2.0))
            for queue in ("fast", "other"):
                n += 1
                uuid = f"c{n}"
                feed(ev("task-sent", t, uuid=uuid, name=f"proj.{queue}", queue=queue))
                feed(ev("task-received", t, uuid=uuid, name=f"proj.{queue}", hostname=host))
                feed(ev("task-started", t + 0.1, uuid=uuid, hostname=host))
                feed(ev("task-succeeded", t + 0.5, uuid=uuid, hostname=host, runtime=0.4))
            if second < 299:
                feed(ev("worker-offline", t + 0.8, hostname=host))
    # 'slow' waits: tasks sent long ago, never received; plus 20 more queues with demand
    for i in range(5):
        feed(ev("task-sent", T0, uuid=f"s{i}", name="proj.slow", queue="fast"))
    for q in range(20):
        feed(ev("task-sent", t, uuid=f"q{q}", name="proj.other", queue=f"extra{q}"))
    engine.state.workers = CountingWorkers(engine.state.workers)
    CountingWorkers.passes = 0
    engine.evaluate(t + 1.0)
    assert engine.rule_errors == {}
    # one pass per rule that reads workers (at most a handful), not one per queue (22+)
    assert CountingWorkers.passes <= 12, CountingWorkers.passes
    starved = [f for f in engine.findings.active()
               if f.practice == "queue_starvation" and f.queue == "fast"]
    assert starved, [f.practice for f in engine.findings.active()]
    evidence = starved[0].evidence
    assert evidence["shared_workers"] == ["pod-299-0@h", "pod-299-1@h"]
    assert {o["queue"] for o in evidence["occupied_by"]} == {"fast", "other"}


def test_starved_queues_of_the_same_workers_share_one_occupancy_per_round() -> None:
    """Queues consumed by the same workers get the same inversion evidence (computed once
    a round) as copies of their own; queues of other workers get theirs; a new round
    sees what changed since."""
    engine = Engine(Settings(), broker_url="redis://localhost:6379/0")
    feed = engine.observe
    for host in ("ab1@h", "ab2@h", "c@h"):
        feed(ev("worker-online", T0, hostname=host, freq=2.0))
    engine.apply_worker_probes({
        "ab1@h": WorkerSample(("a", "b", "bulk"), prefetch=1, concurrency=1),
        "ab2@h": WorkerSample(("a", "b", "bulk"), prefetch=1, concurrency=1),
        "c@h": WorkerSample(("c", "reports"), prefetch=1, concurrency=1),
    })
    # each worker runs one long task of another queue; a, b and c wait behind them
    for host, queue in (("ab1@h", "bulk"), ("ab2@h", "bulk"), ("c@h", "reports")):
        uuid = f"run-{host}"
        feed(ev("task-sent", T0, uuid=uuid, name=f"proj.{queue}", queue=queue))
        feed(ev("task-received", T0, uuid=uuid, name=f"proj.{queue}", hostname=host))
        feed(ev("task-started", T0 + 1, uuid=uuid, hostname=host))
    for queue in ("a", "b", "c"):
        feed(ev("task-sent", T0 + 1, uuid=f"wait-{queue}", name=f"proj.{queue}",
                queue=queue))
    t = T0
    for step in range(1, 13):
        t = T0 + 10.0 * step
        for host in ("ab1@h", "ab2@h", "c@h"):
            feed(beat(host, t, active=1))
        engine.evaluate(t)
    assert engine.rule_errors == {}
    starved = {f.queue: f.evidence for f in engine.findings.active()
               if f.practice == "queue_starvation"}
    assert set(starved) == {"a", "b", "c"}, starved
    a, b, c = starved["a"], starved["b"], starved["c"]
    assert a["shared_workers"] == b["shared_workers"] == ["ab1@h", "ab2@h"]
    assert c["shared_workers"] == ["c@h"]
    assert a["occupied_by"] == b["occupied_by"]
    assert [o["queue"] for o in a["occupied_by"]] == ["bulk"]
    assert a["occupied_by"][0]["running_now"] == 2
    assert [o["queue"] for o in c["occupied_by"]] == ["reports"]
    assert c["occupied_by"][0]["running_now"] == 1
    # copies: one finding's evidence is not another's
    assert a["occupied_by"] is not b["occupied_by"]
    assert a["occupied_by"][0] is not b["occupied_by"][0]
    # the next round recomputes: ab1's run ended, so 'bulk' runs once on those workers
    t += 10.0
    feed(ev("task-succeeded", t, uuid="run-ab1@h", hostname="ab1@h", runtime=t - T0))
    for host in ("ab1@h", "ab2@h", "c@h"):
        feed(beat(host, t, active=0 if host == "ab1@h" else 1))
    engine.evaluate(t)
    starved = {f.queue: f.evidence for f in engine.findings.active()
               if f.practice == "queue_starvation"}
    bulk = [o for o in starved["a"]["occupied_by"] if o["queue"] == "bulk"]
    assert bulk and bulk[0]["running_now"] == 1, starved["a"]["occupied_by"]
    assert a["occupied_by"][0]["busy_seconds"] == 0.0  # no run had ended then
    assert bulk[0]["tasks_started"] == 2 and bulk[0]["busy_seconds"] > 100
