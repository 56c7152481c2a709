"""How long one evaluation holds the engine lock with 100,000 tracked tasks.

The engine is fed, through ``Engine.observe``, ``--workers`` live workers (heartbeats)
and ``--tasks`` in-flight tasks over 10 queues: per worker ``--running`` started tasks and
``--reserved`` received ones, the rest sent and still waiting in the broker (the common
shape of a backlog). Then ``Engine.evaluate`` runs ``--rounds`` times, the clock
advancing 10 s each round; the engine's lock is wrapped to time every hold. Reported: the
median and the maximum lock hold per evaluation (the longest single hold within it), and
the evaluation's wall time.

    python bench/evaluation.py                  # 100,000 tasks, 100 workers
    python bench/evaluation.py --tasks 20000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

from flower_practices.config import Settings
from flower_practices.engine import Engine


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


def run(tasks: int, workers: int, running: int, reserved: int, rounds: int) -> dict[str, Any]:
    t0 = time.time() - 600.0
    engine = build(tasks, workers, running, reserved, t0)
    lock = TimedLock()
    engine.lock = lock  # type: ignore[assignment]
    holds: list[float] = []
    walls: list[float] = []
    now = t0 + 60.0
    for _ in range(rounds):
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
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    result = run(args.tasks, args.workers, args.running, args.reserved, args.rounds)
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
