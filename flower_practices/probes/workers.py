"""Workers' consumed queues, prefetch and concurrency, through Celery's remote control."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery

from ..events.sanitize import label_text
from ..routes import queue_bindings


@dataclass(slots=True)
class WorkerSample:
    queues: tuple[str, ...]
    prefetch: int | None = None
    concurrency: int | None = None
    #: (exchange, exchange type, routing key, queue) of the queues it consumes
    bindings: tuple[tuple[str, str, str, str], ...] = ()


def probe_workers(app: Celery, timeout: float = 1.0) -> dict[str, WorkerSample]:
    """``inspect active_queues`` + ``stats`` (prefetch, pool size); {} when nobody answers.

    Hostnames and queue names are cleaned as event fields are (they are labels and keys,
    and must match the names seen in events); entries that are not strings are skipped.
    """
    inspector = app.control.inspect(timeout=timeout)
    active: dict[str, Any] = inspector.active_queues() or {}
    stats: dict[str, Any] = {}
    if active:
        stats = inspector.stats() or {}
    out: dict[str, WorkerSample] = {}
    for raw_hostname, queues in active.items():
        hostname = label_text(raw_hostname)
        if not hostname:
            continue
        if not isinstance(queues, list | tuple):
            queues = ()
        names = tuple(sorted(name for q in queues if isinstance(q, dict)
                             if (name := label_text(q.get("name", ""))) is not None))
        sample = WorkerSample(queues=names, bindings=queue_bindings(queues))
        info = stats.get(raw_hostname) or {}
        if not isinstance(info, dict):
            info = {}
        prefetch = info.get("prefetch_count")
        if isinstance(prefetch, int):
            sample.prefetch = prefetch
        pool = info.get("pool") or {}
        concurrency = pool.get("max-concurrency") if isinstance(pool, dict) else None
        if isinstance(concurrency, int):
            sample.concurrency = concurrency
        out[hostname] = sample
    return out
