"""In-process benchmarks of the engine: memory bound, /metrics render time, label caps.

- ``memory``: feed ``Engine.observe`` 1,000,000 complete tasks (sent, received, started,
  succeeded; every 50th task never finishes, so in-flight records pile up to the
  ``max_tracked_tasks`` cap) and compare RSS after 100,000 and after 1,000,000 tasks, and
  the CPU per event over the first and the last 100,000 tasks (the caps full by then).
- ``render``: an engine holding ≥ 10,000 series; time what ``/metrics`` runs on the
  exporter's registry (``render_body``, as the render cache calls it: text format and
  OpenMetrics; ``render_text`` alone with the cyclic GC on, and ``generate_latest``, for
  comparison), median and worst; and how long each render holds the engine lock.
- ``cardinality``: 500 workers × 200 task names × 50 queues (every task name in every
  queue) with caps lowered to ``max_workers=100, max_task_names=50, max_queues=10``: the
  series count stays bounded and the overflow counter counts what was folded.
"""

from __future__ import annotations

import gc
import statistics
import time

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.exporter.handlers import render_body
from flower_practices.exporter.server import make_registry
from flower_practices.metrics import PracticesCollector, render_text


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _task(engine: Engine, i: int, ts: float, *, names: int = 50, queues: int = 10,
          workers: int = 20, finish: bool = True, pair: tuple[int, int] | None = None) -> None:
    uuid = f"{i:032x}"
    n, q = pair if pair is not None else (i % names, i % queues)
    name = f"proj.tasks.t{n}"
    queue = f"q{q}"
    host = f"w{i % workers}@bench"
    observe = engine.observe
    observe({"type": "task-sent", "uuid": uuid, "name": name, "queue": queue,
             "routing_key": queue, "args": "(1,)", "kwargs": "{}", "retries": 0,
             "hostname": "web@bench", "timestamp": ts})
    observe({"type": "task-received", "uuid": uuid, "name": name, "hostname": host,
             "args": "(1,)", "kwargs": "{}", "retries": 0, "timestamp": ts + 0.001})
    observe({"type": "task-started", "uuid": uuid, "hostname": host, "timestamp": ts + 0.002})
    if finish:
        observe({"type": "task-succeeded", "uuid": uuid, "hostname": host, "runtime": 0.003,
                 "result": "None", "timestamp": ts + 0.005})


def bench_memory(total: int = 2_000_000, checkpoint: int = 100_000,
                 unfinished_every: int = 0) -> dict:
    """RSS and CPU per event over ``total`` tasks; every ``unfinished_every``-th task never
    finishes (0: all do), so its record stays in flight.

    RSS is read after ``checkpoint`` tasks (the caps just filled), after half of them and
    at the end; ``growth_percent`` is over the second half, once every table has been
    churned through its cap many times (the dicts at their steady size, the allocator's
    arenas settled): a leak shows there. The first tables' growth after they fill is
    not one."""
    engine = Engine(Settings())
    start = time.time() - total * 0.0001
    out: dict = {"tasks": total, "checkpoint": checkpoint}
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    # CPU per event over the first ``checkpoint`` tasks and over the last ``checkpoint``:
    # once the caps are full (records, deliveries, finished ids) every table evicts on
    # each insert, and that must stay O(1) (``steady_to_early`` about 1)
    late_from = total - checkpoint
    late_cpu = 0.0
    half = total // 2
    for i in range(total):
        if i == late_from:
            late_cpu = time.process_time()
        _task(engine, i, start + i * 0.0001,
              finish=not unfinished_every or i % unfinished_every != 0)
        if i % 20_000 == 0:
            engine.evaluate(start + i * 0.0001)
        if i + 1 == checkpoint:
            out["early_us_per_event"] = (time.process_time() - cpu0) / (checkpoint * 3.98) * 1e6
            gc.collect()
            out["rss_mib_at_checkpoint"] = rss_mib()
        if i + 1 == half:
            gc.collect()
            out["rss_mib_at_half"] = rss_mib()
    if late_from >= checkpoint:
        out["late_us_per_event"] = (time.process_time() - late_cpu) / (checkpoint * 3.98) * 1e6
        out["steady_to_early"] = out["late_us_per_event"] / out["early_us_per_event"]
    gc.collect()
    out["rss_mib_at_end"] = rss_mib()
    out["growth_percent"] = (out["rss_mib_at_end"] / out["rss_mib_at_half"] - 1) * 100
    out["tracked_tasks_at_end"] = len(engine.state.tasks)
    out["evicted"] = engine.state.tasks.evicted
    out["seconds"] = time.perf_counter() - t0
    out["engine_cpu_us_per_event"] = (time.process_time() - cpu0) / (total * 3.98) * 1e6
    return out


def _series(text: bytes) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))


def bench_render(target_series: int = 10_000, renders: int = 7) -> dict:
    settings = Settings(max_task_names=1000, max_queues=200, max_workers=1000)
    engine = Engine(settings)
    registry = make_registry(engine)
    now = time.time()
    i = 0
    # (task name, queue) pairs, each with task-event counters and a runtime histogram,
    # added 20 at a time until the exposition holds target_series samples
    while _series(generate_latest(registry)) < target_series:
        for _ in range(20):
            _task(engine, i, now, workers=200, pair=(i // 20, i % 20))
            i += 1
    text = generate_latest(registry)
    out: dict = {}
    # "metrics": what the exporter's render cache runs for /metrics (render_body: text
    # format, GC held off); "openmetrics": the same for Prometheus' OpenMetrics Accept;
    # "render_text": the renderer alone with the collector on; generate_latest: reference
    cases = (("metrics", lambda: render_body(registry, CONTENT_TYPE_PLAIN_0_0_4)),
             ("openmetrics", lambda: render_body(registry, OPENMETRICS)),
             ("render_text", lambda: render_text(registry)),
             ("generate_latest", lambda: generate_latest(registry)))
    for label, render in cases:
        timings = []
        for _ in range(renders):
            t0 = time.perf_counter()
            body = render()
            timings.append(time.perf_counter() - t0)
        if label == "metrics":
            text = body
        out[label] = {"median_ms": statistics.median(timings) * 1000,
                      "max_ms": max(timings) * 1000}
    # how long a render holds the engine lock (what the event path waits for)
    holds = []
    collector = PracticesCollector(engine)
    real_lock = engine.lock

    class TimedLock:
        def __enter__(self) -> None:
            real_lock.acquire()
            self.t0 = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            holds.append(time.perf_counter() - self.t0)
            real_lock.release()

    engine.lock = TimedLock()  # type: ignore[assignment]
    try:
        for _ in range(renders):
            list(collector.collect())
    finally:
        engine.lock = real_lock
    out["lock_hold"] = {"median_ms": statistics.median(holds) * 1000,
                        "max_ms": max(holds) * 1000}
    return {"series": _series(text), "bytes": len(text), **out}


def bench_cardinality(workers: int = 500, names: int = 200, queues: int = 50,
                      caps: dict | None = None) -> dict:
    caps = caps if caps is not None else {"max_workers": 100, "max_task_names": 50,
                                          "max_queues": 10}
    settings = Settings(**caps)
    engine = Engine(settings)
    registry = make_registry(engine)
    now = time.time()
    i = 0
    t0 = time.perf_counter()
    for w in range(workers):
        engine.observe({"type": "worker-heartbeat", "hostname": f"w{w}@bench", "freq": 2.0,
                        "active": 0, "processed": 0, "timestamp": now})
    for q in range(queues):
        for n in range(names):
            _task(engine, i, now, workers=workers, pair=(n, q))  # every (name, queue) pair
            i += 1
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    text = render_text(registry)
    render_ms = (time.perf_counter() - t1) * 1000
    overflow = {**engine.state.label_overflow(), "series": engine.metrics.series_overflow}
    labels = {"worker": set(), "task": set(), "queue": set()}
    for line in text.decode().splitlines():
        if line.startswith("#"):
            continue
        for key in labels:
            marker = f'{key}="'
            pos = line.find(marker)
            if pos >= 0:
                end = line.index('"', pos + len(marker))
                labels[key].add(line[pos + len(marker):end])
    return {"workers": workers, "task_names": names, "queues": queues, "tasks": i,
            "caps": caps,
            "series": _series(text), "distinct_label_values": {k: len(v) for k, v in
                                                               labels.items()},
            "overflow_counted": overflow, "seconds": seconds, "render_ms": render_ms}


def _wire(msgs: list) -> bytes:
    """What Redis sends a pattern subscriber for ``msgs``: one ``pmessage`` frame each."""
    return b"".join(b"*4\r\n$8\r\npmessage\r\n$13\r\n/0.celeryev/*\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                    % (len(c), c.encode(), len(d), d) for c, d, _ in msgs)


def read_wire(wire: bytes, on_frame: object, pure_python: bool = False) -> None:
    """Parse ``wire`` as the consumers do (RESP, fed in FEED_BYTES slices) and hand each
    ``pmessage`` payload to ``on_frame``."""
    from flower_practices.events.resp import FEED_BYTES, new_reader

    reader = new_reader(pure_python)
    for offset in range(0, len(wire), FEED_BYTES):
        reader.feed(wire, offset, min(FEED_BYTES, len(wire) - offset))
        frame = reader.gets()
        while frame is not False:
            on_frame(frame[3])  # type: ignore[operator]
            frame = reader.gets()


def bench_ingest(group: int = 24, n_events: int = 50_000, repeats: int = 3) -> dict:
    """Where the direct path's and the plugin's per-event CPU goes, in-process (best of
    ``repeats``, CPU µs per event): RESP parsing, the floor (parse + the two JSON
    decodes), :class:`EventDecoder` into a no-op handler and into ``Engine.observe``,
    ``Engine.observe`` alone, Flower's ``EventsState.event`` alone, and with the
    plugin's tap feeding the engine after every event or in batches (as it does)."""
    import types
    from binascii import a2b_base64

    import orjson
    from celery import Celery
    from flower.events import EventsState

    from bench.events import encode, stream
    from flower_practices.events.fast_redis import EventDecoder
    from flower_practices.events.status import StreamStatus
    from flower_practices.flower_plugin.plugin import flush_tap, tap_state

    msgs = encode(stream(n_events, start=time.time(), rate=4000), 0, group)
    events = sum(n for _, _, n in msgs)
    wire = _wire(msgs)
    app = Celery("bench", broker="redis://127.0.0.1:6379/0", set_as_current=False)

    def read(on_frame: object, pure_python: bool = False) -> None:
        read_wire(wire, on_frame, pure_python)

    def floor(payload: bytes, loads: object = orjson.loads) -> None:
        loads(a2b_base64(loads(payload)["body"]))

    def _decoder_into(engine: Engine) -> EventDecoder:
        # as the exporter wires it: the events of a message go to observe_many at once
        return EventDecoder(app, engine.observe, engine.stream_status, engine.observe_many)

    decoded: list[dict] = []
    read(EventDecoder(app, decoded.append, StreamStatus()).feed)

    def engine_alone() -> None:
        observe = Engine(Settings()).observe
        for ev in [dict(e) for e in decoded]:
            observe(ev)

    def flower(tap: str) -> None:
        holder = types.SimpleNamespace(state=EventsState(max_tasks_in_memory=10_000))
        engine = Engine(Settings())
        if tap == "per_event":
            tap_state(holder, engine.observe, engine.stream_status)
        elif tap == "batched":
            holder.io_loop = types.SimpleNamespace(call_later=lambda *a: None)
            tap_state(holder, engine.observe, engine.stream_status, engine.observe_many)
        handle = holder.state.event
        for i, ev in enumerate([dict(e) for e in decoded]):
            handle(ev)
            if tap == "batched" and i % 200 == 199:  # 100 ms of a 2000 events/s stream
                flush_tap(holder)

    subjects = {
        "resp_hiredis": lambda: read(lambda p: None),
        "resp_pure_python": lambda: read(lambda p: None, pure_python=True),
        "floor": lambda: read(floor),
        "decoder_noop": lambda: read(EventDecoder(app, lambda e: None, StreamStatus()).feed),
        "decoder_engine": lambda: read(_decoder_into(Engine(Settings())).feed),
        "engine_alone": engine_alone,
        "flower": lambda: flower("none"),
        "flower_tap_per_event": lambda: flower("per_event"),
        "flower_tap_batched": lambda: flower("batched"),
    }
    best: dict[str, float] = {}
    for _ in range(repeats):  # interleaved, so machine load hits every subject alike
        for key, fn in subjects.items():
            gc.collect()
            t0 = time.process_time()
            fn()
            best[key] = min(best.get(key, float("inf")),
                            (time.process_time() - t0) / events * 1e6)
    return {"group": group, "events": events, "messages": len(msgs),
            "cpu_us_per_event": best}
