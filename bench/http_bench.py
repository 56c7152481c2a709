"""HTTP benchmark: ``/metrics`` latency under 1, 10 and 1000 concurrent scrapers, and
``/healthz`` latency meanwhile, on a ~2 MB exposition.

The real ``flower-practices exporter`` runs as its own process against a private
``redis-server``; 1,500 task names' events (sent, received, started, succeeded) make its
``/metrics`` page ~2.3 MB. Scrapers are asyncio connections in this process (one request per
connection, body counted, not kept); ``/healthz`` is probed every 20 ms by a separate process
(``python -m bench.http_bench probe PORT``) with blocking sockets, so the prober is not
delayed by the scrapers' own event loop. Latency = connect to last byte.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import redis

from bench.events import channel, envelope
from bench.stream_bench import ROOT, free_port, peak_rss_mib, start_redis

REQUEST = b"GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
#: what Prometheus 2.x/3.x sends with each scrape (it always accepts gzip)
PROMETHEUS_HEADERS = (b"Accept: application/openmetrics-text;version=1.0.0;q=0.5,"
                      b"text/plain;version=0.0.4;q=0.3,*/*;q=0.2\r\nAccept-Encoding: gzip\r\n")


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0

    return {"n": len(ordered), "p50_ms": pick(0.50), "p90_ms": pick(0.90),
            "p99_ms": pick(0.99), "max_ms": ordered[-1] * 1000.0,
            "mean_ms": statistics.fmean(ordered) * 1000.0}


class _Scrape(asyncio.Protocol):
    """One GET; resolves to (status, body bytes) once Content-Length bytes arrived."""

    def __init__(self, request: bytes, done: asyncio.Future) -> None:
        self.request, self.done = request, done
        self.head = b""
        self.status = 0
        self.length: int | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.length is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.head[:end], self.head[end + 4:]
            self.status = int(head.split(b" ", 2)[1])
            self.length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.length = int(value)
            data = rest
        self.received += len(data)
        if self.received >= self.length and not self.done.done():
            self.done.set_result((self.status, True))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result((self.status, False))


async def _one(port: int, request: bytes) -> tuple[float, int, bool]:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    done: asyncio.Future = loop.create_future()
    try:
        transport, _ = await loop.create_connection(lambda: _Scrape(request, done),
                                                    "127.0.0.1", port)
    except OSError:
        return time.perf_counter() - start, 0, False
    try:
        status, complete = await asyncio.wait_for(done, 300)
    except TimeoutError:
        status, complete = 0, False
    finally:
        transport.close()
    return time.perf_counter() - start, status, complete


async def _load(port: int, clients: int, seconds: float,
                request: bytes) -> list[tuple[float, int, bool]]:
    """``clients`` scrapers, each scraping back to back for ``seconds`` (at least once)."""
    deadline = time.perf_counter() + seconds

    async def client() -> list[tuple[float, int, bool]]:
        out = [await _one(port, request)]
        while time.perf_counter() < deadline:
            out.append(await _one(port, request))
        return out

    results = await asyncio.gather(*(client() for _ in range(clients)))
    return [r for rs in results for r in rs]


def probe(port: int) -> None:
    """Probe /healthz every 20 ms until stdin closes; print the latencies (JSON)."""
    import select
    import socket

    latencies: list[float] = []
    statuses: list[str] = []
    failures = 0
    while not select.select([sys.stdin], [], [], 0.02)[0]:
        start = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(REQUEST % b"/healthz")
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
            if data.startswith(b"HTTP/1.1 200"):
                latencies.append(time.perf_counter() - start)
            else:
                failures += 1
                statuses.append(data[:12].decode(errors="replace"))
        except OSError as exc:
            failures += 1
            statuses.append(f"{type(exc).__name__} after {time.perf_counter() - start:.1f}s")
    print(json.dumps({"latencies": latencies, "failures": failures, "statuses": statuses}))


def _publish(url: str, names: int) -> int:
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    now, n = time.time(), 0
    for i in range(names):
        uid, name, host = f"{i:032x}", f"proj.tasks.bench_task_{i:05d}", f"w{i % 20}@bench"
        for j, (kind, extra) in enumerate([
                ("task-sent", {"name": name, "queue": "bench", "hostname": "web@bench"}),
                ("task-received", {"name": name, "hostname": host}),
                ("task-started", {"hostname": host}),
                ("task-succeeded", {"hostname": host, "runtime": 0.01 * (i % 7 + 1)})]):
            event = {"type": kind, "uuid": uid, "timestamp": now + j * 0.001,
                     "clock": n + 1, "utcoffset": 0, **extra}
            pipe.publish(channel(0, event), envelope(event))
            n += 1
        if i % 200 == 0:
            pipe.execute()
    pipe.execute()
    return n


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
            return resp.status, resp.read()
    except OSError:
        return 0, b""


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def scrape_request(mode: str) -> bytes:
    """``prometheus``: Prometheus' own headers (OpenMetrics, gzip); ``identity``: plain."""
    extra = PROMETHEUS_HEADERS if mode == "prometheus" else b""
    return (b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n" + extra
            + b"\r\n")


def bench_http(levels: list[int], modes: list[str], seconds: float = 5.0, names: int = 900,
               cache_seconds: float = 1.0, redis_url: str | None = None) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="fp-http-bench-"))
    redis_proc = None
    if redis_url is None:
        redis_proc, redis_port = start_redis(workdir)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
    cfg = workdir / "exporter.toml"
    cfg.write_text(f"[exporter]\nprobe_interval = 3600\nmax_task_names = {names + 100}\n"
                   f"max_series_per_metric = 1000000\nmetrics_cache_seconds = {cache_seconds}\n")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    exporter = subprocess.Popen(
        [sys.executable, "-m", "flower_practices", "exporter", "--broker", redis_url,
         "--host", "127.0.0.1", "--port", str(port), "--config", str(cfg),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=str(ROOT))
    result: dict = {"modes": {}, "cache_seconds": cache_seconds}
    try:
        _wait(lambda: _get(port, "/healthz")[0] == 200, 60, "the exporter's event stream")
        published = _publish(redis_url, names)
        _wait(lambda: len(_get(port, "/metrics")[1]) > 2_000_000, 120,
              f"a ~2 MB page ({published} events published)")
        size = len(_get(port, "/metrics")[1])
        result["page_bytes"] = size
        for mode, clients in [(m, c) for m in modes for c in levels]:
            prober = subprocess.Popen([sys.executable, "-m", "bench.http_bench", "probe",
                                       str(port)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=env, cwd=str(ROOT))
            time.sleep(0.5)  # let the prober take a few idle samples first
            started = time.perf_counter()
            scraped = asyncio.run(_load(port, clients, seconds, scrape_request(mode)))
            elapsed = time.perf_counter() - started
            out, _ = prober.communicate(b"", timeout=60)
            probed = json.loads(out)
            if os.environ.get("FP_BENCH_DEBUG"):
                print(clients, [round(x * 1000, 1) for x in probed["latencies"]],
                      file=sys.stderr)
            ok = [lat for lat, status, complete in scraped if status == 200 and complete]
            result["modes"].setdefault(mode, {})[clients] = {
                "scrapes": len(scraped), "ok": len(ok),
                "statuses": dict(Counter(f"{status}{'' if complete else ' incomplete'}"
                                         for _, status, complete in scraped)),
                "failed": len(scraped) - len(ok), "seconds": elapsed,
                "metrics": percentiles(ok),
                "healthz": percentiles(probed["latencies"]),
                "healthz_failures": probed["failures"],
                "healthz_failed_with": probed["statuses"],
            }
        result["exporter_peak_rss_mib"] = peak_rss_mib(exporter.pid)
    finally:
        exporter.terminate()
        try:
            exporter.wait(15)
        except subprocess.TimeoutExpired:
            exporter.kill()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
    return result


def print_http(result: dict) -> None:
    print(f"\n## HTTP: /metrics page {result['page_bytes'] / 1e6:.2f} MB, "
          f"metrics_cache_seconds = {result['cache_seconds']}; exporter peak RSS "
          f"{result['exporter_peak_rss_mib']:.0f} MiB\n")
    print("| request | scrapers | scrapes ok/total | /metrics p50 / p90 / p99 / max ms | "
          "/healthz probes | /healthz p50 / p99 / max ms |")
    print("|---|---:|---:|---|---:|---|")
    for mode, clients, r in [(m, c, r) for m, levels in result["modes"].items()
                             for c, r in levels.items()]:
        m, h = r["metrics"], r["healthz"]
        metrics = (f"{m['p50_ms']:.0f} / {m['p90_ms']:.0f} / {m['p99_ms']:.0f} / "
                   f"{m['max_ms']:.0f}" if m["n"] else "–")
        health = (f"{h['p50_ms']:.1f} / {h['p99_ms']:.1f} / {h['max_ms']:.1f}"
                  if h["n"] else "–")
        print(f"| {mode} | {clients} | {r['ok']}/{r['scrapes']} | {metrics} | "
              f"{h['n']} ({r['healthz_failures']} failed) | {health} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "probe":
        probe(int(sys.argv[2]))
    else:
        print_http(bench_http([1, 10, 1000], ["identity", "prometheus"]))
