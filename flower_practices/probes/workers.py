"""Workers' consumed queues, prefetch and concurrency, through Celery's remote control."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery


@dataclass(slots=True)
class WorkerSample:
    queues: tuple[str, ...]
    prefetch: int | None = None
    concurrency: int | None = None


def probe_workers(app: Celery, timeout: float = 1.0) -> dict[str, WorkerSample]:
    """``inspect active_queues`` + ``stats`` (prefetch, pool size); {} when nobody answers."""
    inspector = app.control.inspect(timeout=timeout)
    active: dict[str, Any] = inspector.active_queues() or {}
    stats: dict[str, Any] = {}
    if active:
        stats = inspector.stats() or {}
    out: dict[str, WorkerSample] = {}
    for hostname, queues in active.items():
        names = tuple(sorted(q.get("name", "") for q in queues or () if isinstance(q, dict)))
        sample = WorkerSample(queues=names)
        info = stats.get(hostname) or {}
        prefetch = info.get("prefetch_count")
        if isinstance(prefetch, int):
            sample.prefetch = prefetch
        pool = info.get("pool") or {}
        concurrency = pool.get("max-concurrency") if isinstance(pool, dict) else None
        if isinstance(concurrency, int):
            sample.concurrency = concurrency
        out[hostname] = sample
    return out
