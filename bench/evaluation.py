"""How long one evaluation holds the engine lock with 100,000 tracked tasks.

The engine is fed, through ``Engine.observe``, ``--workers`` live workers (heartbeats)
and ``--tasks`` in-flight tasks over 10 queues: per worker ``--running`` started tasks and
``--reserved`` received ones, the rest sent and still waiting in the broker (the common
shape of a backlog). Then ``Engine.evaluate`` runs ``--rounds`` times, the clock
advancing 10 s each round; the engine's lock is wrapped to time every hold. Reported: the
median and the maximum lock hold per evaluation (the longest single hold within it), and
the evaluation's wall time.

``--churn N``: pod churn on top -- every second of event time N workers that were never
seen before come online, each runs two tasks (of the 10 queues) and leaves: half of them
with a worker-offline, half silently (killed pods stop heartbeating). The engine has
seen ``--churn-seconds`` of that before the first round, and it goes on between rounds,
so the per-worker and per-(worker, queue) tables hold every generation still in their
windows.

The collector runs as in the exporter process (start-up objects frozen, its
``GC_THRESHOLDS``); ``--default-gc`` keeps CPython's thresholds, as inside Flower, where a
collection can land inside a hold.

    python bench/evaluation.py                  # 100,000 tasks, 100 workers
    python bench/evaluation.py --churn 10       # the same with 10 new workers a second
    python bench/evaluation.py --tasks 20000 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import threading
import time
from typing import Any

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.exporter.server import GC_THRESHOLDS


class TimedLock:
    """An RLock that records how long each outermost hold lasted."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._since = 0.0
        self.holds: list[float] = []

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        ok = self._lock.acquire(*args, **kwargs)
        if ok:
            self._depth += 1
            if self._depth == 1:
                self._since = time.perf_counter()
        return ok

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.holds.append(time.perf_counter() - self._since)
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def build(tasks: int, workers: int, running: int, reserved: int, t0: float) -> Engine:
    engine = Engine(Settings(max_tracked_tasks=tasks))
    hosts = [f"celery@w{i}" for i in range(workers)]
    for host in hosts:
        engine.observe({"type": "worker-online", "hostname": host, "timestamp": t0,
                        "freq": 2.0, "active": 0, "processed": 0})
    n = 0

    def task(state: str, host: str) -> None:
        nonlocal n
        uuid = f"{n:032x}"
        queue = f"q{n % 10}"
        n += 1
        engine.observe({"type": "task-sent", "uuid": uuid, "name": f"proj.t{n % 50}",
                        "queue": queue, "timestamp": t0})
        if state == "SENT":
            return
        engine.observe({"type": "task-received", "uuid": uuid, "name": f"proj.t{n % 50}",
                        "hostname": host, "timestamp": t0 + 1})
        if state == "STARTED":
            engine.observe({"type": "task-started", "uuid": uuid, "hostname": host,
                            "timestamp": t0 + 2})

    for host in hosts:
        for _ in range(running):
            task("STARTED", host)
        for _ in range(reserved):
            task("RECEIVED", host)
    while n < tasks:
        task("SENT", "")
    return engine


class Churn:
    """Feeds pod churn: ``per_second`` new workers a second, each running two tasks."""

    def __init__(self, engine: Engine, per_second: int) -> None:
        self.engine = engine
        self.per_second = per_second
        self.n = 0

    def feed(self, start: float, end: float) -> None:
        observe = self.engine.observe
        second = start
        while second < end:
            for _ in range(self.per_second):
                i = self.n
                self.n += 1
                host = f"celery@pod-{i:07d}"
                ts = second + (i % self.per_second) / self.per_second
                observe({"type": "worker-online", "hostname": host, "timestamp": ts,
                         "local_received": ts, "freq": 2.0, "active": 0, "processed": 0})
                for k in range(2):
                    uuid = f"c{i:023x}{k:08x}"
                    queue = f"q{(i + k) % 10}"
                    name = f"proj.t{(i + k) % 50}"
                    at = ts + 0.1 * k
                    observe({"type": "task-sent", "uuid": uuid, "name": name, "queue": queue,
                             "timestamp": at, "local_received": at})
                    observe({"type": "task-received", "uuid": uuid, "name": name,
                             "hostname": host, "timestamp": at + 0.01,
                             "local_received": at + 0.01})
                    observe({"type": "task-started", "uuid": uuid, "hostname": host,
                             "timestamp": at + 0.02, "local_received": at + 0.02})
                    observe({"type": "task-succeeded", "uuid": uuid, "hostname": host,
                             "runtime": 0.05, "timestamp": at + 0.07,
                             "local_received": at + 0.07})
                if i % 2 == 0:
                    observe({"type": "worker-offline", "hostname": host,
                             "timestamp": ts + 0.5, "local_received": ts + 0.5})
            second += 1.0


def run(tasks: int, workers: int, running: int, reserved: int, rounds: int,
        churn: int = 0, churn_seconds: float = 600.0, default_gc: bool = False
        ) -> dict[str, Any]:
    if not default_gc:  # as the exporter does once it started (exporter/server.py)
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
    t0 = time.time() - 600.0 - (churn_seconds if churn else 0.0)
    engine = build(tasks, workers, running, reserved, t0)
    feeder = Churn(engine, churn) if churn else None
    if feeder is not None:
        feeder.feed(t0 + 60.0 - churn_seconds, t0 + 60.0)
    lock = TimedLock()
    engine.lock = lock  # type: ignore[assignment]
    holds: list[float] = []
    walls: list[float] = []
    now = t0 + 60.0
    for _ in range(rounds):
        if feeder is not None:
            feeder.feed(now - 10.0, now)
        for i in range(workers):  # keep every worker alive
            engine.observe({"type": "worker-heartbeat", "hostname": f"celery@w{i}",
                            "timestamp": now, "local_received": now, "freq": 2.0,
                            "active": running, "processed": 0})
        lock.holds.clear()
        started = time.perf_counter()
        engine.evaluate(now)
        walls.append(time.perf_counter() - started)
        holds.append(max(lock.holds))
        now += 10.0
    return {
        "tracked_tasks": len(engine.state.tasks), "workers": workers,
        "running_per_worker": running, "reserved_per_worker": reserved, "rounds": rounds,
        "churn_workers_per_second": churn,
        "gc_thresholds": "default" if default_gc else "exporter",
        "worker_records": len(engine.state.workers),
        "lock_hold_ms_median": round(statistics.median(holds) * 1000, 2),
        "lock_hold_ms_max": round(max(holds) * 1000, 2),
        "evaluation_ms_median": round(statistics.median(walls) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--running", type=int, default=4)
    parser.add_argument("--reserved", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--churn", type=int, default=0,
                        help="new workers a second (pod churn), 0: none")
    parser.add_argument("--churn-seconds", type=float, default=600.0,
                        help="seconds of churn seen before the first round")
    parser.add_argument("--default-gc", action="store_true",
                        help="CPython's collector thresholds (as inside Flower), not the "
                             "exporter's")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    result = run(args.tasks, args.workers, args.running, args.reserved, args.rounds,
                 args.churn, args.churn_seconds, args.default_gc)
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
