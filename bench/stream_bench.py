"""Event-stream benchmark: CPU µs per event and peak RSS of each consumer, same run.

A private ``redis-server`` (no pub/sub output-buffer limit, so no consumer is dropped)
carries one synthetic stream (:mod:`bench.events`) that every subject consumes at the
same time, each in its own process:

- ``floor`` the raw pub/sub read and the two JSON decodes each message needs, nothing
  else (:mod:`bench.floor`: hiredis, orjson),
- ``a``  bare ``celery.events.Receiver`` with an empty handler (the reference),
- ``b``  ``flower-practices exporter`` with every rule on (direct Redis path),
- ``b_kombu`` the same exporter forced onto Celery's generic receiver,
- ``c``  Flower,
- ``d``  Flower with the flower-practices plugin (when the plugin is installed).

CPU is read from ``/proc/<pid>/stat`` (utime+stime) before and after the stream, minus
each process's own idle rate measured just before; peak RSS is ``VmHWM``.

:func:`bench_sustained` runs the exporter alone against a fast grouped stream and tells
whether it keeps up (its CPU share of one core, and how long after the last publish it
had counted every event).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.events import encode, stream

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def plugin_available() -> bool:
    try:
        import flower_practices.flower_plugin.command  # noqa: F401
    except Exception:
        return False
    return True


@dataclass
class Subject:
    key: str
    label: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    log: Path | None = None
    idle_rate: float = 0.0
    cpu0: float = 0.0
    t0: float = 0.0
    result: dict = field(default_factory=dict)


def subjects(url: str, which: list[str], workdir: Path) -> list[Subject]:
    py = sys.executable
    cfg_fast = workdir / "fast.toml"
    cfg_kombu = workdir / "kombu.toml"
    # probes off the table (a probe is a broker round trip, not per-event work)
    cfg_fast.write_text("[exporter]\nprobe_interval = 3600\n")
    cfg_kombu.write_text('[exporter]\nprobe_interval = 3600\nevent_consumer = "kombu"\n')
    out = []
    for key in which:
        if key == "floor":
            out.append(Subject("floor", "floor: raw pub/sub read + the two JSON decodes",
                               [py, str(ROOT / "bench" / "floor.py"), url]))
        elif key == "a":
            out.append(Subject("a", "bare celery Receiver, empty handler",
                               [py, str(ROOT / "bench" / "bare_receiver.py"), url]))
        elif key in ("b", "b_kombu"):
            cfg = cfg_fast if key == "b" else cfg_kombu
            label = ("flower-practices exporter, all rules (direct Redis path)" if key == "b"
                     else "flower-practices exporter, all rules (kombu path)")
            out.append(Subject(key, label, [
                py, "-m", "flower_practices", "exporter", "--broker", url, "--config", str(cfg),
                "--host", "127.0.0.1", "--port", str(free_port()), "--log-level", "warning"]))
        elif key == "c":
            out.append(Subject("c", "Flower", [
                py, "-m", "celery", "--broker", url, "flower", "--address=127.0.0.1",
                f"--port={free_port()}", "--logging=warning"]))
        elif key == "d":
            if not plugin_available():
                print("  (d) skipped: flower_practices.flower_plugin is not installed yet",
                      file=sys.stderr)
                continue
            out.append(Subject("d", "Flower + flower-practices plugin, all rules", [
                py, "-m", "celery", "--broker", url, "flower-practices",
                f"--practices_config={cfg_fast}", "--address=127.0.0.1",
                f"--port={free_port()}", "--logging=warning"]))
    return out


def start_redis(workdir: Path) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found; pass --redis-url to use a running Redis")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--client-output-buffer-limit", "pubsub 0 0 0", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("private redis-server did not start")


def pattern_subscribers(client: redis.Redis) -> int:
    return sum(1 for c in client.client_list() if int(c.get("psub", 0)) > 0)


def start_subjects(subs: list[Subject], workdir: Path) -> None:
    """Start every subject in its own process, its output in ``<workdir>/<key>.log``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for s in subs:
        s.log = workdir / f"{s.key}.log"
        with open(s.log, "wb") as out:
            s.proc = subprocess.Popen(s.argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                      cwd=str(ROOT))


def wait_subscribed(subs: list[Subject], subscribed: Callable[[], int], expected: int,
                    timeout: float = 90.0) -> None:
    """Wait until ``subscribed()`` (the broker's count of event consumers) reaches
    ``expected``; a subject that exits or a timeout ends the benchmark with its logs."""
    deadline = time.time() + timeout
    while (n := subscribed()) < expected:
        for s in subs:
            if s.proc.poll() is not None:
                raise SystemExit(f"subject {s.key} exited:\n{s.log.read_text()[-3000:]}")
        if time.time() > deadline:
            logs = "\n".join(f"--- {s.key}:\n{s.log.read_text()[-1500:]}" for s in subs)
            raise SystemExit(f"subjects did not subscribe within {timeout:.0f} s "
                             f"({n} of {expected}):\n{logs}")
        time.sleep(0.2)
    time.sleep(3.0)  # start-up work (wake-up broadcast, first evaluation) settles


def wait_settled(subs: list[Subject], timeout: float,
                 counts: Callable[[], dict[str, float | None]] | None = None,
                 expected: dict[str, int] | None = None) -> dict[str, float | None]:
    """Wait until every subject's CPU is back at its idle rate (its backlog drained) and,
    when ``counts`` is given, until it counted ``expected`` events (Flower queues events
    on its IOLoop, so an idle receiver thread does not mean done) -- or, if some never
    get there, until the counts stop moving. Returns the last counts."""
    prev = {s.key: cpu_seconds(s.proc.pid) for s in subs}
    last: dict[str, float | None] = {}
    still = 0
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(1.0)
        busy = False
        for s in subs:
            now = cpu_seconds(s.proc.pid)
            if now - prev[s.key] > s.idle_rate * 1.0 + 2.0 / TICK:
                busy = True
            prev[s.key] = now
        if counts is None:
            if not busy:
                break
            continue
        seen = counts()
        still = still + 1 if seen == last else 0
        last = seen
        if not busy and (seen == expected or still >= 5):
            break
    return last


def record_results(subs: list[Subject], n_events: int) -> None:
    """Each subject's CPU µs per event since ``cpu0`` (minus its idle rate) and peak RSS."""
    for s in subs:
        cpu1, t1 = cpu_seconds(s.proc.pid), time.time()
        used = (cpu1 - s.cpu0) - s.idle_rate * (t1 - s.t0)
        s.result = {
            "cpu_us_per_event": used / n_events * 1e6,
            "cpu_seconds": cpu1 - s.cpu0,
            "idle_cpu_percent": s.idle_rate * 100.0,
            "peak_rss_mib": peak_rss_mib(s.proc.pid),
        }


#: messages per publish pipeline by default (bursts every ~0.1 s at 2,000 events/s)
BURST = 250


def _publish(client: redis.Redis, msgs: list, rate: float, batch: int = BURST) -> float:
    """Publish ``msgs`` at ``rate`` events/s, ``batch`` messages per pipeline (1: each
    message on its own, paced, as workers publish their events as they happen)."""
    started = time.time()
    pipe = client.pipeline(transaction=False)
    done = 0
    for i in range(0, len(msgs), batch):
        for ch, data, n in msgs[i:i + batch]:
            pipe.publish(ch, data)
            done += n
        pipe.execute()
        ahead = started + done / rate - time.time()
        if ahead > 0:
            time.sleep(ahead)
    return time.time() - started


def run_stream(url: str, db: int, which: list[str], n_events: int, rate: float,
               idle_seconds: float, workdir: Path, group: int, subs: list[Subject],
               burst: int = BURST) -> dict:
    """Run the stream; ``subs`` (empty) is filled with the subjects before they start,
    so that the caller stops them whatever happens."""
    client = redis.Redis.from_url(url)
    base_subs = pattern_subscribers(client)
    subs += subjects(url, which, workdir)
    start_subjects(subs, workdir)
    wait_subscribed(subs, lambda: pattern_subscribers(client), base_subs + len(subs))
    measure_idle_rates(subs, idle_seconds)

    print(f"  encoding {n_events} events...", file=sys.stderr)
    msgs = encode(stream(n_events, start=time.time(), rate=rate), db, group)
    n_events = sum(n for _, _, n in msgs)  # ends on a whole task, a few events past target
    for s in subs:
        s.cpu0, s.t0 = cpu_seconds(s.proc.pid), time.time()
    print(f"  publishing at {rate:.0f} events/s...", file=sys.stderr)
    publish_seconds = _publish(client, msgs, rate, burst)
    wait_settled(subs, timeout=180)
    record_results(subs, n_events)
    return {"events": n_events, "messages": len(msgs), "group": group, "rate": rate,
            "burst": burst,
            "publish_seconds": publish_seconds}


def exporter_event_count(s: Subject) -> float | None:
    """``flower_practices_events_total`` of an exporter subject (None if unreadable)."""
    import urllib.request

    port = s.argv[s.argv.index("--port") + 1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("flower_practices_events_total "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def stop(subs: list[Subject]) -> None:
    for s in subs:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.terminate()
    for s in subs:
        if s.proc is not None:
            try:
                s.proc.wait(10)
            except subprocess.TimeoutExpired:
                s.proc.kill()



def measure_idle_rates(subs: list, idle_seconds: float) -> None:
    """Set each subject's ``idle_rate``: CPU seconds per second while no event flows."""
    idle0 = {s.key: cpu_seconds(s.proc.pid) for s in subs}
    t_idle = time.time()
    time.sleep(idle_seconds)
    dt_idle = time.time() - t_idle
    for s in subs:
        s.idle_rate = (cpu_seconds(s.proc.pid) - idle0[s.key]) / dt_idle

def bench_stream(which: list[str], n_events: int, rate: float, idle_seconds: float,
                 redis_url: str | None, group: int = 1, burst: int = BURST) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="fp-bench-"))
    server = None
    if redis_url is None:
        server, port = start_redis(workdir)
        redis_url = f"redis://127.0.0.1:{port}/0"
    from flower_practices.events.fast_redis import redis_db

    db = redis_db(redis_url.rsplit("/", 1)[-1])
    subs: list[Subject] = []
    try:
        meta = run_stream(redis_url, db, which, n_events, rate, idle_seconds, workdir, group,
                          subs, burst)
        for s in subs:
            if s.key.startswith("b"):
                s.result["events_seen"] = exporter_event_count(s)
        meta["subjects"] = {s.key: {"label": s.label, **s.result} for s in subs}
        return meta
    finally:
        stop(subs)
        if server is not None:
            server.kill()
            server.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


def bench_sustained(rate: float, n_events: int, group: int = 24,
                    redis_url: str | None = None) -> dict:
    """The exporter (direct Redis path, every rule) alone, fed ``n_events`` grouped events
    at ``rate`` per second: its CPU share of one core while the stream lasts, and how long
    after the last publish it had counted the last event (it kept up if that is short
    and its CPU share is below 1)."""
    workdir = Path(tempfile.mkdtemp(prefix="fp-bench-"))
    server = None
    if redis_url is None:
        server, port = start_redis(workdir)
        redis_url = f"redis://127.0.0.1:{port}/0"
    from flower_practices.events.fast_redis import redis_db

    db = redis_db(redis_url.rsplit("/", 1)[-1])
    client = redis.Redis.from_url(redis_url)
    base_subs = pattern_subscribers(client)
    subs = subjects(redis_url, ["b"], workdir)
    s = subs[0]
    # /metrics rendered afresh at each poll, so the count read is the count now
    (workdir / "fast.toml").write_text("[exporter]\nprobe_interval = 3600\n"
                                       "metrics_cache_seconds = 0\n")
    try:
        start_subjects(subs, workdir)
        wait_subscribed(subs, lambda: pattern_subscribers(client), base_subs + 1, timeout=60)
        print(f"  encoding {n_events} events...", file=sys.stderr)
        msgs = encode(stream(n_events, start=time.time(), rate=rate), db, group)
        n_events = sum(n for _, _, n in msgs)
        seen0 = exporter_event_count(s) or 0.0
        print(f"  publishing at {rate:.0f} events/s...", file=sys.stderr)
        cpu0 = cpu_seconds(s.proc.pid)
        started = time.time()
        pipe = client.pipeline(transaction=False)
        done = 0
        for i in range(0, len(msgs), 20):
            for ch, data, n in msgs[i:i + 20]:
                pipe.publish(ch, data)
                done += n
            pipe.execute()
            ahead = started + done / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
        published = time.time()
        cpu_at_end = cpu_seconds(s.proc.pid)
        caught_up = None
        while time.time() < published + 60:
            seen = exporter_event_count(s)
            if seen is not None and seen - seen0 >= n_events:
                caught_up = time.time()
                break
            time.sleep(0.05)
        cpu1 = cpu_seconds(s.proc.pid)
        seconds = published - started
        return {
            "events": n_events, "group": group, "target_rate": rate,
            "published_rate": n_events / seconds, "publish_seconds": seconds,
            "cpu_share_while_publishing": (cpu_at_end - cpu0) / seconds,
            "cpu_us_per_event": (cpu1 - cpu0) / n_events * 1e6,
            "lag_seconds": None if caught_up is None else caught_up - published,
        }
    finally:
        stop(subs)
        if server is not None:
            server.kill()
            server.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
