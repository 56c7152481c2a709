"""Rate limits from the app's configuration, and the waits they excuse (no broker).

Celery resolves a task's ``rate_limit`` from the task, ``task_annotations`` or
``task_default_rate_limit``; ``worker_disable_rate_limits`` turns them all off. The state
leaves a rate-limited task's queue wait out of its queue's waits (it waits for its rate,
as an ETA task waits for its time); an ordinary task's wait stays in.
"""

from __future__ import annotations

from celery import Celery

from flower_practices.appinfo import snapshot_app
from flower_practices.config import Settings
from flower_practices.engine import Engine


def _app(**conf: object) -> Celery:
    app = Celery("rl_units", broker="memory://", set_as_current=False)
    app.conf.update(task_annotations={"rl.annotated": {"rate_limit": "1/s"}}, **conf)

    @app.task(name="rl.own", shared=False, rate_limit="10/m")
    def own() -> None: ...

    @app.task(name="rl.annotated", shared=False)
    def annotated() -> None: ...

    @app.task(name="rl.plain", shared=False)
    def plain() -> None: ...

    @app.task(name="rl.zero", shared=False, rate_limit="0")
    def zero() -> None: ...

    return app


def test_rate_limits_as_the_worker_applies_them() -> None:
    tasks = snapshot_app(_app()).tasks
    assert tasks["rl.own"].rate_limit == "10/m"
    assert tasks["rl.annotated"].rate_limit == "1/s"
    assert tasks["rl.plain"].rate_limit is None
    assert tasks["rl.zero"].rate_limit is None  # 0: no limit
    tasks = snapshot_app(_app(task_default_rate_limit="5/s")).tasks
    assert tasks["rl.plain"].rate_limit == "5/s"
    tasks = snapshot_app(_app(worker_disable_rate_limits=True)).tasks
    assert all(t.rate_limit is None for t in tasks.values())


def test_a_rate_limited_tasks_wait_is_left_out_of_its_queues_waits() -> None:
    engine = Engine(Settings(), app=snapshot_app(_app()))
    assert engine.state.rate_limited == frozenset({"rl.own", "rl.annotated"})
    t = 1.7e9
    for i, name in enumerate(("rl.own", "rl.plain", "rl.annotated", "rl.plain")):
        uuid = f"task-{i}"
        engine.observe({"type": "task-sent", "uuid": uuid, "name": name, "queue": "q",
                        "hostname": "client@h", "timestamp": t, "local_received": t})
        engine.observe({"type": "task-received", "uuid": uuid, "name": name,
                        "hostname": "w@h", "timestamp": t + 1, "local_received": t + 1})
        engine.observe({"type": "task-started", "uuid": uuid, "hostname": "w@h",
                        "timestamp": t + 30, "local_received": t + 30})
    waits = engine.state.queues["q"].waits.since(0.0)
    assert waits == [30.0, 30.0]  # the two rl.plain runs only
