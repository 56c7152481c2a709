"""The real exporter (``serve``) running in a thread with its own event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from flower_practices.config import Settings
from flower_practices.exporter.server import serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningExporter:
    """``metrics_cache_seconds`` defaults to 0 here (whatever ``settings`` says): a test that
    reads ``/metrics`` right after seeing a change in ``/healthz`` or ``/api/practices`` must
    not get the rendering of up to a second ago. Requests still go through the render
    cache's thread and single flight; the cache window itself is tested in
    tests/test_exporter_http_*.py."""

    def __init__(self, app: Celery, settings: Settings | None = None, *,
                 app_loaded: bool = False, metrics_cache_seconds: float = 0.0) -> None:
        self.app = app
        self.settings = dataclasses.replace(
            settings or Settings(evaluation_interval=1.0, probe_interval=1.0),
            metrics_cache_seconds=metrics_cache_seconds)
        self.app_loaded = app_loaded
        self.port = free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            ready = asyncio.Event()
            task = asyncio.ensure_future(serve(self.app, self.settings,
                                               app_loaded=self.app_loaded,
                                               host="127.0.0.1", port=self.port,
                                               ready=ready, stop=self._stop))
            await ready.wait()
            self._ready.set()
            await task

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    def start(self) -> RunningExporter:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def __enter__(self) -> RunningExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reading ---------------------------------------------------------------------
    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def families(self) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
        """Every declared metric family (even one with no series) and its samples."""
        _, text = self.get("/metrics")
        out: dict[str, dict] = {}
        for family in text_string_to_metric_families(text):
            samples = out.setdefault(family.name, {})
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for samples in self.families().values():
            out.update(samples)
        return out

    def value(self, name: str, **labels: str) -> float | None:
        """Sum of samples named ``name`` whose labels include ``labels``; None if none."""
        found = [v for (n, lbls), v in self.samples().items()
                 if n == name and all(dict(lbls).get(k) == val for k, val in labels.items())]
        return sum(found) if found else None

    def total(self, name: str, **labels: str) -> float:
        """Like :meth:`value`, but 0.0 when no series matches, provided the family that
        ``name`` belongs to is declared in the exposition: a renamed or missing metric
        raises AssertionError instead of reading as zero."""
        families = self.families()
        family = next((f for f in (name, _family_of(name)) if f in families), None)
        if family is None:
            raise AssertionError(f"metric family of {name!r} is not exposed at all")
        return sum(v for (n, lbls), v in families[family].items()
                   if n == name and all(dict(lbls).get(k) == val for k, val in labels.items()))

    def evaluated_at(self) -> float:
        """When the last finished rules evaluation started (Unix time; 0 before the first)."""
        return self.total(LAST_EVALUATION)

    def wait_evaluated(self, since: float | None = None, rounds: int = 2,
                       timeout: float = 60.0) -> float:
        """Wait for ``rounds`` rules evaluations that started at or after ``since`` (default:
        now) to finish; returns when the last of them started. What a "no finding" check
        waits on: an evaluation that began after the workload's events were counted has
        judged them (``since`` = a threshold's end: one judged them past the threshold)."""
        return wait_evaluations(self.evaluated_at, since, rounds, timeout)

    def practices(self) -> dict:
        return json.loads(self.get("/api/practices")[1])

    def findings(self, practice: str | None = None) -> list[dict]:
        found = self.practices()["findings"]
        return [f for f in found if practice is None or f["practice"] == practice]


#: the evaluation mark: when the last finished rules evaluation started
LAST_EVALUATION = "flower_practices_last_evaluation_timestamp_seconds"


def wait_evaluations(evaluated_at: Callable[[], float], since: float | None = None,
                     rounds: int = 2, timeout: float = 60.0) -> float:
    """:meth:`RunningExporter.wait_evaluated` for any front end: ``evaluated_at`` reads
    ``flower_practices_last_evaluation_timestamp_seconds`` from it."""
    since = time.time() if since is None else since
    # the timeout counts from ``since`` when that lies ahead (a threshold's end)
    deadline = max(time.time(), since) + timeout
    floor = started = since
    for n in range(1, rounds + 1):
        started = wait_for(lambda f=floor: (t := evaluated_at()) >= f and t,
                           timeout=max(deadline - time.time(), 0.5), interval=0.1,
                           message=f"evaluation {n} of {rounds} started at or after "
                           f"{since:.3f}")
        floor = started + 1e-6
    return started


def _family_of(sample: str) -> str:
    """The family name a sample name belongs to (histogram/counter suffixes removed)."""
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
        if sample.endswith(suffix):
            return sample[: -len(suffix)]
    return sample


def wait_for(predicate: Callable[[], object], timeout: float = 30.0,
             interval: float = 0.25, message: str = "condition") -> object:
    """Poll ``predicate`` until truthy; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last={last!r})")
