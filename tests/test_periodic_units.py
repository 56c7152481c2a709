"""The periodic-task learner and rules fed synthetic, real-shaped task-sent events through
the real Engine (no broker needed); the real-worker tests are in
tests/test_periodic_practices.py."""

from __future__ import annotations

import random
import time

from celery import Celery
from celery.schedules import crontab

from flower_practices.appinfo import snapshot_app
from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.rules.duplicate_beat import DuplicateBeat
from flower_practices.rules.missed_periodic_task import MissedPeriodicTask
from flower_practices.rules.periodic import EARLY, GAP, IRREGULAR, REGULAR, Cadence

TOL, RUNS = 0.1, 5


def learn(intervals: list[float]) -> Cadence:
    c = Cadence()
    for i in intervals:
        c.feed(i, TOL, RUNS)
    return c


def test_cadence_learns_through_jitter_and_one_missing_run() -> None:
    rng = random.Random(7)
    jittered = [10.0 + rng.uniform(-0.5, 0.5) for _ in range(6)]
    c = learn(jittered)
    assert c.learned and abs(c.period - 10.0) < 1.0
    # one missing run (about 2 periods) neither breaks nor restarts the learning
    c = learn([10.0, 10.3, 9.8, 19.8, 9.9, 10.1, 10.0])
    assert c.learned and abs(c.period - 10.0) < 0.5
    c = Cadence()
    for i in (10.0,) * 5:
        c.feed(i, TOL, RUNS)
    assert not c.learned  # four regular intervals are not enough
    assert c.feed(10.1, TOL, RUNS) == REGULAR and c.learned
    # once learned: a late send is a gap, an early one is early, the period stays
    assert c.feed(35.0, TOL, RUNS) == GAP
    assert c.feed(1.0, TOL, RUNS) == EARLY
    assert abs(c.period - 10.0) < 0.5


def test_irregular_tasks_are_never_learned() -> None:
    rng = random.Random(11)
    for _ in range(200):
        intervals = [rng.expovariate(1 / 30.0) for _ in range(30)]
        assert not learn(intervals).learned
    c = Cadence()
    assert c.feed(5.0, TOL, RUNS) != REGULAR
    assert c.feed(17.0, TOL, RUNS) == IRREGULAR


def test_cadence_follows_a_changed_schedule() -> None:
    c = learn([10.0] * 6)
    for _ in range(6):
        c.feed(45.0, TOL, RUNS)
    assert c.learned and c.period == 45.0
    for i in (1.0, 130.0, 7.0, 300.0, 2.0):  # no cadence any more
        c.feed(i, TOL, RUNS)
    assert not c.learned


def test_a_sub_second_cadence_is_never_learned() -> None:
    c = learn([0.4] * 50)
    assert not c.learned and c.feed(0.4, TOL, RUNS) == REGULAR
    c = learn([10.0] * 6)  # learned, then the sends become a steady 0.5 s loop
    for _ in range(6):
        c.feed(0.5, TOL, RUNS)
    assert not c.learned


# -- engine-level, synthetic events ------------------------------------------------------
def engine(app=None, **practices) -> Engine:
    return Engine(Settings(practices={k: dict(v) for k, v in practices.items()}),
                  broker_url="redis://x/0", app=app)


def sent(e: Engine, name: str, ts: float, host: str = "gen1@beat", **extra) -> None:
    e.observe({"type": "task-sent", "uuid": f"{name}-{host}-{ts}", "name": name,
               "queue": "celery", "hostname": host, "timestamp": ts, "retries": 0, **extra})


def findings(e: Engine, practice: str) -> list:
    return [f for f in e.findings.active() if f.practice == practice]


def test_learned_task_missed_and_countdown_tasks_not_learned() -> None:
    e = engine(missed_periodic_task={"grace_seconds": 2.0})
    t0 = time.time() - 100
    rule = next(r for r in e.rules if isinstance(r, MissedPeriodicTask))
    rule.tracker.started = t0
    for k in range(8):
        sent(e, "p.tick", t0 + 5 * k)
        # a task sent alongside with a countdown (by an app), and children of it: never
        # periodic
        sent(e, "p.later", t0 + 5 * k, host="gen7@web", eta="2030-01-01T00:00:00+00:00")
        sent(e, "p.child", t0 + 5 * k + 0.1, parent_id="abc")
    e.evaluate(t0 + 36.0)
    assert not findings(e, "missed_periodic_task")
    e.evaluate(t0 + 43.0)  # due at +40, grace 2
    (f,) = findings(e, "missed_periodic_task")
    assert f.task == "p.tick" and f.evidence["period_source"] == "learned from sends"
    assert f.count == 1
    assert {r.name for r in rule.tracker.periodic()} == {"p.tick"}


def test_a_learned_task_paused_while_its_beat_sends_others_is_not_missed() -> None:
    """A learned period is one fixed interval: a crontab with hours (or an entry disabled
    in a database scheduler) pauses while its beat keeps sending its other periodic
    tasks -- no page. The same pause with the beat gone, or with only another beat still
    sending, is a miss; so is a scheduled task (``-A``) its running beat stopped sending."""
    e = engine(missed_periodic_task={"grace_seconds": 2.0})
    rule = next(r for r in e.rules if isinstance(r, MissedPeriodicTask))
    t0 = time.time() - 200
    rule.tracker.started = t0
    for k in range(8):  # both learned from gen1@beat; p.other from a second beat too
        sent(e, "p.hours", t0 + 5 * k)
        sent(e, "p.tick", t0 + 5 * k + 1)
        sent(e, "p.other", t0 + 5 * k + 2, host="gen9@beat2")
    # p.hours pauses after +35 (due +40); gen1@beat keeps sending p.tick
    for k in range(8, 14):
        sent(e, "p.tick", t0 + 5 * k + 1)
        sent(e, "p.other", t0 + 5 * k + 2, host="gen9@beat2")
    e.evaluate(t0 + 67.0)
    assert not findings(e, "missed_periodic_task")
    assert e.metrics.violations_total.get(("missed_periodic_task", "", "p.hours"), 0) == 0
    # then gen1@beat goes down (gen9@beat2, another scheduler, still sends p.other):
    # p.tick is missed, and p.hours is no longer excused by it
    for k in range(14, 17):
        sent(e, "p.other", t0 + 5 * k + 2, host="gen9@beat2")
    e.evaluate(t0 + 75.0)  # p.tick due +71, grace 2
    assert sorted(f.task for f in findings(e, "missed_periodic_task")) == [
        "p.hours", "p.tick"]

    # a task paused on one beat while only *another* beat sends: missed
    e = engine(missed_periodic_task={"grace_seconds": 2.0})
    rule = next(r for r in e.rules if isinstance(r, MissedPeriodicTask))
    rule.tracker.started = t0
    for k in range(8):
        sent(e, "p.hours", t0 + 5 * k)
    for k in range(14):
        sent(e, "p.other", t0 + 5 * k + 2, host="gen9@beat2")
    e.evaluate(t0 + 67.0)
    assert [f.task for f in findings(e, "missed_periodic_task")] == ["p.hours"]

    # with -A: a scheduled task its running beat stops sending is missed all the same
    app = Celery("p", broker="memory://", set_as_current=False)
    app.conf.task_send_sent_event = True
    app.conf.beat_schedule = {"hours": {"task": "p.hours", "schedule": 5.0},
                              "tick": {"task": "p.tick", "schedule": 5.0}}
    e = engine(snapshot_app(app), missed_periodic_task={"grace_seconds": 2.0})
    rule = next(r for r in e.rules if isinstance(r, MissedPeriodicTask))
    rule.tracker.started = t0
    for k in range(8):
        sent(e, "p.hours", t0 + 5 * k)
    for k in range(14):
        sent(e, "p.tick", t0 + 5 * k + 1)
    e.evaluate(t0 + 67.0)
    assert [f.task for f in findings(e, "missed_periodic_task")] == ["p.hours"]


def test_a_steady_sub_second_producer_is_not_periodic() -> None:
    """A load generator or producer loop sending tasks round-robin many times a second
    is perfectly regular per task name, but not a schedule: when it stops, nothing is
    "missed", and its runs are not tracked as periodic runs."""
    e = engine(missed_periodic_task={"grace_seconds": 1.0})
    t0 = time.time() - 600
    rule = next(r for r in e.rules if isinstance(r, MissedPeriodicTask))
    rule.tracker.started = t0
    names = [f"load.t{i}" for i in range(20)]
    for k in range(2000):  # 50 tasks/s: each name exactly every 0.4 s
        sent(e, names[k % 20], t0 + k * 0.02, "gen7@loadgen")
    assert not rule.tracker.periodic()
    e.evaluate(t0 + 120)  # the generator stopped 80 s ago
    assert not findings(e, "missed_periodic_task")
    # the same cadence slowed to one send of each name every 2 s is learned
    for k in range(20 * 8):
        sent(e, names[k % 20], t0 + 200 + k * 0.1, "gen7@loadgen")
    assert {r.name for r in rule.tracker.periodic()} == set(names)


def test_a_cadence_is_learned_only_once_it_held_for_min_span() -> None:
    c = Cadence()
    for _ in range(30):  # 30 regular 3 s intervals: 90 s of cadence
        c.feed(3.0, TOL, RUNS, 600.0)
    assert not c.learned
    for _ in range(171):  # 600 s of it (the first interval is the candidate)
        c.feed(3.0, TOL, RUNS, 600.0)
    assert c.learned and c.period == 3.0
    # an irregular interval restarts the span: the time counts again from there
    c = Cadence()
    for i in [3.0] * 150 + [17.0] + [3.0] * 150:
        c.feed(i, TOL, RUNS, 600.0)
    assert not c.learned
    # a long period needs min_regular_runs all the same
    c = learn([300.0] * 4)
    assert not c.learned
    c = Cadence()
    for _ in range(4):
        c.feed(300.0, TOL, RUNS, 600.0)
    assert not c.learned
    c.feed(300.0, TOL, RUNS, 600.0)
    c.feed(300.0, TOL, RUNS, 600.0)
    assert c.learned


def test_a_steady_producer_that_stops_within_the_learning_span_is_not_missed() -> None:
    """With min_learning_seconds = 600, a batch job sending tasks on a steady rhythm for
    a few minutes, then stopping, is no scheduler dying; one whose rhythm held for longer
    is learned, and its stopping is a missed run."""
    span = {"min_learning_seconds": 600.0}
    e = Engine(Settings(practices={"missed_periodic_task": {"grace_seconds": 5.0, **span},
                                   "duplicate_beat": span, "periodic_overlap": span}),
               broker_url="redis://x/0")
    t0 = time.time() - 3000
    rule = next(r for r in e.rules if isinstance(r, MissedPeriodicTask))
    rule.tracker.started = t0
    for k in range(150):  # every 2 s for 5 minutes, another task every 6 s
        sent(e, "batch.step", t0 + 2.0 * k, "gen9@batch")
        if k % 3 == 0:
            sent(e, "batch.report", t0 + 2.0 * k + 0.5, "gen9@batch")
    assert not rule.tracker.periodic()
    e.evaluate(t0 + 600)
    assert not findings(e, "missed_periodic_task")
    assert not findings(e, "periodic_overlap") and not findings(e, "duplicate_beat")
    # the same producer steady for 11 minutes is a scheduler: its stop is missed
    t1 = t0 + 1000
    for k in range(330):
        sent(e, "batch.step", t1 + 2.0 * k, "gen9@batch")
    assert {r.name for r in rule.tracker.periodic()} == {"batch.step"}
    e.evaluate(t1 + 660 + 10)
    (f,) = findings(e, "missed_periodic_task")
    assert f.task == "batch.step" and f.evidence["period_source"] == "learned from sends"


def test_a_producer_that_sends_delayed_tasks_is_an_application_not_a_beat(tmp_path) -> None:
    """A web app that sends a task on a steady rhythm is not a scheduler once it is seen
    sending a task with a countdown (beat sends when due; database schedulers have no
    countdown): its learned task is no longer periodic, even learned before, while a
    real beat's task next to it is still judged -- also after a restart."""
    from flower_practices.store import StateStore

    practices = {"missed_periodic_task": {"grace_seconds": 2.0}}
    url = "redis://x/0"
    t0 = time.time() - 200
    e = Engine(Settings(practices=practices), broker_url=url, store=StateStore(tmp_path, url))
    rule = next(r for r in e.rules if isinstance(r, MissedPeriodicTask))
    rule.tracker.started = t0
    for k in range(8):
        sent(e, "web.sync", t0 + 5 * k, "gen3@web")
        sent(e, "beat.tick", t0 + 5 * k + 0.1, "gen1@beat")
    assert {r.name for r in rule.tracker.periodic()} == {"web.sync", "beat.tick"}
    sent(e, "web.mail", t0 + 36, "gen3@web", eta="2030-01-01T00:00:00+00:00")
    sent(e, "web.sync", t0 + 40, "gen3@web")  # no longer learned from
    assert {r.name for r in rule.tracker.periodic()} == {"beat.tick"}
    e.evaluate(t0 + 60)  # both stopped: only the beat's task is missed
    assert [f.task for f in findings(e, "missed_periodic_task")] == ["beat.tick"]
    again = Engine(Settings(practices=practices), broker_url=url,
                   store=StateStore(tmp_path, url))
    rule = next(r for r in again.rules if isinstance(r, MissedPeriodicTask))
    assert "gen3@web" in rule.tracker.applications
    assert {r.name for r in rule.tracker.periodic()} == {"beat.tick"}


def test_two_producers_are_a_duplicate_beat_and_a_failover_is_not() -> None:
    e = engine()
    t0 = time.time() - 200
    for k in range(8):
        sent(e, "p.dup", t0 + 5 * k, "gen1@a")
        sent(e, "p.dup", t0 + 5 * k + 0.2, "gen2@b")
        sent(e, "p.failover", t0 + 5 * k, "gen3@a")
    for k in range(8, 16):  # the first beat stopped, another took over
        sent(e, "p.failover", t0 + 5 * k + 2.5, "gen4@b")
    e.evaluate(t0 + 85)
    (f,) = findings(e, "duplicate_beat")
    assert f.task == "p.dup" and f.evidence["hosts"] == ["gen1@a", "gen2@b"]


def test_one_producers_burst_is_not_a_duplicate_beat_but_a_recurring_double_send_is() -> None:
    """A producer loop sending every 5 s that once sends three at once is no second beat
    (seen: a regular client loop flagged); one producer sending twice in each of
    several periods is (one beat sending the task twice per period)."""
    e = engine()
    t0 = time.time() - 200
    for k in range(8):
        sent(e, "p.loop", t0 + 5 * k, "gen1@client")
        sent(e, "p.twice", t0 + 5 * k, "gen2@beat")
    for j in range(3):  # the burst: three at once, one period
        sent(e, "p.loop", t0 + 40 + 0.1 * j, "gen1@client")
    for k in range(8, 11):  # twice per period, three periods in a row
        sent(e, "p.twice", t0 + 5 * k, "gen2@beat")
        sent(e, "p.twice", t0 + 5 * k + 0.2, "gen2@beat")
    e.evaluate(t0 + 56)
    (f,) = findings(e, "duplicate_beat")
    assert f.task == "p.twice" and f.evidence["hosts"] == ["gen2@beat"]
    assert f.count == f.evidence["duplicate_sends"] == 3
    assert e.metrics.violations_total.get(("duplicate_beat", "", "p.loop"), 0) == 0


def test_app_schedule_interval_and_crontab_and_static_checks() -> None:
    app = Celery("p", broker="memory://", set_as_current=False)
    app.conf.task_send_sent_event = True

    @app.task(name="p.every")
    def every() -> None: ...

    app.conf.beat_schedule = {
        "every": {"task": "p.every", "schedule": 4.0},
        "nightly": {"task": "p.every", "schedule": crontab(minute=0, hour=3),
                    "args": (1,)},
        "ghost": {"task": "p.ghost", "schedule": 10.0},
        "twin-a": {"task": "p.every", "schedule": 60.0, "args": (2,)},
        "twin-b": {"task": "p.every", "schedule": 60.0, "args": (2,)},
    }
    info = snapshot_app(app)
    kinds = {x.name: x.kind for x in info.beat_schedule}
    assert kinds == {"every": "interval", "nightly": "crontab", "ghost": "interval",
                     "twin-a": "interval", "twin-b": "interval"}
    nightly = next(x for x in info.beat_schedule if x.name == "nightly")
    assert abs(nightly.period_at(time.time()) - 86400) < 3700  # DST days differ
    assert any(t == "p.ghost" for t, _ in MissedPeriodicTask.static_check(info))
    assert [t for t, _ in DuplicateBeat.static_check(info)] == ["p.every"]
    # a scheduled task never sent is overdue a period + grace after the start, not before
    e = engine(info, missed_periodic_task={"grace_seconds": 1.0})
    rule = next(r for r in e.rules if isinstance(r, MissedPeriodicTask))
    start = rule.tracker.started
    e.evaluate(start + 4.5)
    assert not findings(e, "missed_periodic_task")
    e.evaluate(start + 5.5)
    assert [f.task for f in findings(e, "missed_periodic_task")] == ["p.every"]
    e.evaluate(start + 11.5)
    assert sorted(f.task for f in findings(e, "missed_periodic_task")) == [
        "p.every", "p.ghost"]


def test_learned_periods_and_duplicates_survive_a_restart(tmp_path) -> None:
    """The state file keeps what the rules learned: after a restart a task whose beat
    died is still known as periodic (nothing would teach it again), a duplicate finding
    keeps its hosts, and nothing is counted twice."""
    from flower_practices.store import StateStore

    practices = {"missed_periodic_task": {"grace_seconds": 2.0}}
    url = "redis://x/0"
    t0 = time.time() - 60
    first = Engine(Settings(practices=practices), broker_url=url,
                   store=StateStore(tmp_path, url))
    for k in range(8):
        sent(first, "p.tick", t0 + 5 * k, "gen1@a")
        sent(first, "p.tick", t0 + 5 * k + 0.3, "gen2@b")
    first.evaluate(t0 + 36.0)
    (dup,) = findings(first, "duplicate_beat")
    assert not findings(first, "missed_periodic_task")
    counted = dup.count
    first.store.close()

    # the beats die with the exporter; it restarts 1 s later
    again = Engine(Settings(practices=practices), broker_url=url,
                   store=StateStore(tmp_path, url))
    rule = next(r for r in again.rules if isinstance(r, MissedPeriodicTask))
    assert [r.name for r in rule.tracker.periodic()] == ["p.tick"]
    restart = rule.tracker.started
    again.evaluate(restart + 6.5)
    assert not findings(again, "missed_periodic_task")  # not before a period + grace
    again.evaluate(restart + 7.5)
    (missed,) = findings(again, "missed_periodic_task")
    assert missed.evidence["period_source"] == "learned from sends"
    (dup,) = findings(again, "duplicate_beat")
    assert dup.evidence["hosts"] == ["gen1@a", "gen2@b"] and dup.count == counted


def test_an_app_without_sent_events_is_unsupported_not_missed() -> None:
    app = Celery("p", broker="memory://", set_as_current=False)
    app.conf.task_send_sent_event = False
    app.conf.beat_schedule = {"every": {"task": "p.every", "schedule": 1.0}}
    e = engine(snapshot_app(app), missed_periodic_task={"grace_seconds": 0.5})
    cov = e.coverage()
    assert cov["missed_periodic_task"].startswith("unsupported: task_send_sent_event")
    assert cov["duplicate_beat"].startswith("unsupported")
    assert cov["periodic_overlap"] == "active"
    rule = next(r for r in e.rules if isinstance(r, MissedPeriodicTask))
    e.evaluate(rule.tracker.started + 10)
    assert not findings(e, "missed_periodic_task")


def test_the_three_rules_share_one_tracker_fed_once_per_event() -> None:
    e = engine()
    rules = [r for r in e.rules if r.id in ("missed_periodic_task", "duplicate_beat",
                                            "periodic_overlap")]
    assert len(rules) == 3 and len({id(r.tracker) for r in rules}) == 1
    sent_hooks = [rule_id for rule_id, _ in e._hooks["task-sent"] if rule_id in
                  {r.id for r in rules}]
    assert sent_hooks == ["missed_periodic_task"]
    # different learning options: a tracker of its own, fed by its rule
    e = engine(duplicate_beat={"tolerance": 0.3})
    trackers = {r.id: r.tracker for r in e.rules if hasattr(r, "tracker")}
    assert trackers["duplicate_beat"] is not trackers["missed_periodic_task"]
    assert trackers["periodic_overlap"] is trackers["missed_periodic_task"]
    assert {rule_id for rule_id, _ in e._hooks["task-sent"]} >= {
        "missed_periodic_task", "duplicate_beat"}


def test_a_crontab_entry_is_due_as_celery_computes_it() -> None:
    app = Celery("c", broker="memory://", set_as_current=False)
    app.conf.task_send_sent_event = True

    @app.task(name="c.minutely")
    def minutely() -> None: ...

    app.conf.beat_schedule = {"m": {"task": "c.minutely", "schedule": crontab(minute="*")}}
    e = engine(snapshot_app(app), missed_periodic_task={"grace_seconds": 5.0})
    rule = next(r for r in e.rules if isinstance(r, MissedPeriodicTask))
    now = time.time()
    last = (now // 60) * 60 - 120  # sent on a minute, two minutes ago
    rule.tracker.started = last - 300
    sent(e, "c.minutely", last)
    e.evaluate(now)
    (f,) = findings(e, "missed_periodic_task")
    assert f.evidence["period_source"] == "beat_schedule"
    assert f.evidence["period_seconds"] == 60.0
    assert abs(f.evidence["due_at"] - (last + 60)) < 1.0
    assert f.evidence["missed_runs"] >= 1
    # sent again on the minute just past: on time
    e2 = engine(snapshot_app(app), missed_periodic_task={"grace_seconds": 5.0})
    rule2 = next(r for r in e2.rules if isinstance(r, MissedPeriodicTask))
    rule2.tracker.started = last - 300
    sent(e2, "c.minutely", (now // 60) * 60)
    e2.evaluate(now)
    assert not findings(e2, "missed_periodic_task")


def test_a_run_lost_with_its_worker_is_not_a_pile_up() -> None:
    e = engine(lost_task={"grace_seconds": 0.0, "offline_grace_seconds": 0.0})
    t0 = time.time() - 100
    for k in range(12):
        ts = t0 + 5 * k
        uuid = f"p.tick-gen1@beat-{ts}"
        sent(e, "p.tick", ts)
        for etype in ("task-received", "task-started"):
            e.observe({"type": etype, "uuid": uuid, "name": "p.tick", "hostname": "w1@h",
                       "timestamp": ts + 0.1, "retries": 0})
        if k < 8:
            e.observe({"type": "task-succeeded", "uuid": uuid, "hostname": "w1@h",
                       "timestamp": ts + 0.5, "runtime": 0.4})
        elif k == 8:  # the worker dies under this run; lost_task declares it lost
            e.observe({"type": "worker-offline", "hostname": "w1@h", "timestamp": ts + 1})
            e.evaluate(ts + 2)
            assert [f.practice for f in e.findings.active()] == ["lost_task"]
            e.observe({"type": "worker-online", "hostname": "w1@h", "timestamp": ts + 3})
        else:
            e.observe({"type": "task-succeeded", "uuid": uuid, "hostname": "w1@h",
                       "timestamp": ts + 0.5, "runtime": 0.4})
    e.evaluate(t0 + 60)
    assert not findings(e, "periodic_overlap")
    rule = next(r for r in e.rules if r.id == "periodic_overlap")
    assert [r.name for r in rule.tracker.periodic()] == ["p.tick"]
