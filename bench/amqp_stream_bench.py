"""Event-stream benchmark on RabbitMQ: CPU µs per event of each consumer, same run.

The RabbitMQ twin of :mod:`bench.stream_bench`: a fresh vhost on the RabbitMQ server
(``--amqp-url``, default ``amqp://guest:guest@127.0.0.1:5672``) carries one synthetic
stream (:mod:`bench.events`) that every subject consumes at the same time, each in its
own process, each from its own ``celeryev.<uuid>`` queue bound to the ``celeryev`` topic
exchange (as Celery's receiver declares it):

- ``a``  bare ``celery.events.Receiver`` whose handler only counts (the reference),
- ``b``  ``flower-practices exporter`` with every rule on (direct AMQP consumer),
- ``b_kombu`` the same exporter forced onto Celery's generic receiver,
- ``c``  Flower,
- ``d``  Flower with the flower-practices plugin.

Events are published with py-amqp as Celery's dispatcher does (``basic.publish`` on
``celeryev`` with the event type as routing key, ``application/json``, ``utf-8``,
``hostname`` header, non-persistent); with ``group`` > 1 each worker's task events go
out as list bodies of up to ``group`` events (routing key ``task.multi``).

Every subject loads :mod:`bench.amqp_bench_app` (event queue message TTL 600 s instead of
5 s, so a subject that falls behind on a busy machine catches up rather than losing
events). Nothing lost is checked, not assumed: each subject's count of events received is read at
the end (``a``: its own count; ``b``: ``flower_practices_events_total``; ``c``/``d``:
Flower's ``flower_events_total``, which counts task events only) and compared with the
events published; CPU is read once every subject has counted all of them (Flower queues
events on its IOLoop, so its receiver going idle does not mean it is done). CPU is read
from ``/proc/<pid>/stat`` as in :mod:`bench.stream_bench`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import amqp

from bench.events import stream
from bench.stream_bench import (
    ROOT,
    Subject,
    cpu_seconds,
    exporter_event_count,
    measure_idle_rates,
    record_results,
    start_subjects,
    stop,
    subjects,
    wait_settled,
    wait_subscribed,
)

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672"
#: every subject loads this app: event queues keep messages 10 min, not 5 s (see there)
BENCH_APP = "bench.amqp_bench_app"
LABELS = {
    "a": "bare celery Receiver, counting handler",
    "b": "flower-practices exporter, all rules (direct AMQP consumer)",
    "b_kombu": "flower-practices exporter, all rules (kombu path)",
}


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True,
                          text=True, timeout=60).stdout


def make_vhost() -> str:
    vhost = f"fp-bench-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost


def event_consumers(vhost: str) -> int:
    """Consumers of the vhost's ``celeryev.*`` queues (one per subscribed subject)."""
    out = rabbitmqctl("list_queues", "-p", vhost, "name", "consumers", "--no-table-headers")
    n = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("celeryev.") and parts[1].isdigit():
            n += int(parts[1])
    return n


def encode(events, group: int = 1) -> list[tuple[str, bytes, str, int]]:
    """(routing key, JSON body, hostname, events in it) per message, grouped as Celery
    workers group (``buffer_group=['task']``); task-sent and heartbeats stay single."""
    out: list[tuple[str, bytes, str, int]] = []
    buffers: dict[str, list[dict]] = {}
    for ev in events:
        if group <= 1 or ev["type"] in ("task-sent", "worker-heartbeat"):
            out.append((ev["type"].replace("-", "."), json.dumps(ev).encode(),
                        ev["hostname"], 1))
            continue
        buf = buffers.setdefault(ev["hostname"], [])
        buf.append(ev)
        if len(buf) >= group:
            out.append(("task.multi", json.dumps(buf).encode(), ev["hostname"], len(buf)))
            buffers[ev["hostname"]] = []
    for host, buf in buffers.items():
        if buf:
            out.append(("task.multi", json.dumps(buf).encode(), host, len(buf)))
    return out


def flower_event_count(s: Subject) -> float | None:
    """Sum of Flower's ``flower_events_total`` (None if unreadable)."""
    port = next(a.split("=", 1)[1] for a in s.argv if a.startswith("--port="))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("flower_events_total{"))


def event_count(s: Subject, count_file: Path) -> float | None:
    """Events ``s`` has counted so far (None if unreadable)."""
    if s.key.startswith("b"):
        return exporter_event_count(s)
    if s.key in ("c", "d"):
        return flower_event_count(s)
    count_file.unlink(missing_ok=True)
    s.proc.send_signal(signal.SIGUSR1)
    for _ in range(50):
        with contextlib.suppress(OSError, ValueError):
            return float(count_file.read_text())
        time.sleep(0.1)
    return None


def _publish(url: str, msgs: list, rate: float, burst: int = 100) -> float:
    """Publish at ``rate`` events/s, pacing every ``burst`` messages (1: each message on
    its own, as workers publish)."""
    conn = amqp.Connection(**_params(url))
    conn.connect()
    try:
        ch = conn.channel()
        ch.exchange_declare("celeryev", "topic", durable=True, auto_delete=False)
        started = time.time()
        done = 0
        for i, (key, body, host, n) in enumerate(msgs):
            ch.basic_publish(amqp.Message(body, content_type="application/json",
                                          content_encoding="utf-8", delivery_mode=1,
                                          application_headers={"hostname": host}),
                             exchange="celeryev", routing_key=key)
            done += n
            if i % burst == 0:
                ahead = started + done / rate - time.time()
                if ahead > 0:
                    time.sleep(ahead)
        return time.time() - started
    finally:
        conn.close()


def _params(url: str) -> dict:
    from kombu import Connection

    c = Connection(url)
    return {"host": f"{c.hostname}:{c.port or 5672}", "userid": c.userid or "guest",
            "password": c.password or "guest", "virtual_host": c.virtual_host or "/"}


def run_stream(url: str, vhost: str, which: list[str], n_events: int, rate: float,
               idle_seconds: float, workdir: Path, group: int,
               subs: list[Subject], burst: int = 100) -> dict:
    """Run the stream; ``subs`` (empty) is filled with the subjects as they are started,
    so that the caller stops them whatever happens."""
    subs += subjects(url, which, workdir)
    count_file = workdir / "a.count"
    for s in subs:
        s.label = LABELS.get(s.key, s.label)
        if s.key == "a":
            s.argv = [sys.executable, str(ROOT / "bench" / "counting_receiver.py"), url,
                      str(count_file), BENCH_APP]
        elif s.key in ("c", "d"):  # celery -A <app> --broker ... flower
            i = s.argv.index("celery") + 1
            s.argv[i:i] = ["-A", BENCH_APP]
        else:
            s.argv += ["--app", BENCH_APP]
    start_subjects(subs, workdir)
    wait_subscribed(subs, lambda: event_consumers(vhost), len(subs))
    measure_idle_rates(subs, idle_seconds)

    print(f"  encoding {n_events} events...", file=sys.stderr)
    msgs = encode(stream(n_events, start=time.time(), rate=rate), group)
    n_events = sum(m[3] for m in msgs)
    for s in subs:
        s.cpu0, s.t0 = cpu_seconds(s.proc.pid), time.time()
    print(f"  publishing at {rate:.0f} events/s to vhost {vhost}...", file=sys.stderr)
    publish_seconds = _publish(url, msgs, rate, burst)
    # what each subject must count: Flower's flower_events_total counts task events only
    worker_events = sum(n for key, _, _, n in msgs if key.startswith("worker."))
    expected = {s.key: n_events - worker_events if s.key in ("c", "d") else n_events
                for s in subs}
    seen = wait_settled(subs, timeout=300, expected=expected,
                        counts=lambda: {s.key: event_count(s, count_file) for s in subs})
    record_results(subs, n_events)
    for s in subs:
        s.result["events_seen"] = seen.get(s.key)
        s.result["events_expected"] = expected[s.key]
    meta = {"broker": "rabbitmq", "events": n_events, "messages": len(msgs), "group": group,
            "rate": rate, "burst": burst, "publish_seconds": publish_seconds}
    return meta


def bench_amqp_stream(which: list[str], n_events: int, rate: float, idle_seconds: float,
                      amqp_url: str | None = None, group: int = 1, burst: int = 100) -> dict:
    """Run the stream benchmark on a fresh vhost of ``amqp_url``'s RabbitMQ (deleted
    afterwards); returns the same shape as :func:`bench.stream_bench.bench_stream`."""
    if shutil.which("rabbitmqctl") is None:
        raise SystemExit("rabbitmqctl not found: the RabbitMQ stream benchmark needs a "
                         "local RabbitMQ server")
    base = (amqp_url or DEFAULT_AMQP_URL).rstrip("/")
    vhost = make_vhost()
    url = f"{base}/{vhost}"
    workdir = Path(tempfile.mkdtemp(prefix="fp-bench-amqp-"))
    subs: list[Subject] = []
    try:
        meta = run_stream(url, vhost, which, n_events, rate, idle_seconds, workdir, group,
                          subs, burst)
        meta["subjects"] = {s.key: {"label": s.label, **s.result} for s in subs}
        lost = {k: v.get("events_seen") for k, v in meta["subjects"].items()
                if v.get("events_seen") != v["events_expected"]}
        meta["lost"] = lost
        return meta
    finally:
        stop(subs)
        shutil.rmtree(workdir, ignore_errors=True)
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True,
                       timeout=60, check=False)
