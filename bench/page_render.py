"""The Practices page with many findings, in headless Chromium: how long it takes to render.

An in-process Flower with the plugin (memory broker, no event stream: the stale banner
shows, as it should) holds ``--findings`` synthetic findings spread like a bad day: a few
practices with many tasks each (60 retry-less failing task names...), queues and workers.
Chromium (over the DevTools protocol, tests/support/browser.py) loads ``/practices``
``--runs`` times; the page's own performance measure ``fp-render`` (status, groups and
coverage built from the JSON) and the navigation's DOMContentLoaded / load times are
reported as medians, then the time one keystroke in the filter box takes to re-render, and
one refresh cycle (fetch /api/practices + render).

    python bench/page_render.py [--findings 500] [--runs 7] [--screenshot docs/img/x.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import threading
import time
import types
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from celery import Celery  # noqa: E402
from flower.urls import settings as flower_settings  # noqa: E402
from tornado.ioloop import IOLoop  # noqa: E402
from tornado.options import options as tornado_options  # noqa: E402

from flower_practices.findings import Condition  # noqa: E402
from flower_practices.flower_plugin.host import PluginFlower, enable  # noqa: E402
from tests.support.browser import Browser  # noqa: E402

#: (practice, severity, how many findings of it, which label varies)
SPREAD = [
    ("retryless_failure", "warning", 0.30, "task"),
    ("missing_time_limit", "warning", 0.25, "task"),
    ("unread_results", "info", 0.15, "task"),
    ("lost_task", "critical", 0.10, "worker"),
    ("queue_without_consumer", "critical", 0.08, "queue"),
    ("queue_starvation", "warning", 0.07, "queue"),
    ("retry_storm", "warning", 0.05, "task"),
]


def findings(n: int) -> dict[str, tuple[str, list[Condition]]]:
    out: dict[str, tuple[str, list[Condition]]] = {}
    made = 0
    for i, (practice, severity, share, varies) in enumerate(SPREAD):
        k = n - made if i == len(SPREAD) - 1 else round(n * share)
        made += k
        conds = []
        for j in range(k):
            task, worker = f"proj.tasks.job_{j:03d}", f"w{j}@host-{j % 9}"
            queue = f"queue-{j:03d}" if varies == "queue" else f"q{j % 12}"
            conds.append(Condition(
                summary=f"{practice.replace('_', ' ')}: {varies} {j} breaks the practice",
                queue=queue if varies in ("task", "queue") else None,
                task=task if varies == "task" else None,
                worker=worker if varies == "worker" else None,
                evidence={"failures_without_retry": j + 3, "unread_share": 0.97,
                          "oldest_waiting_seconds": 125.0 + j, "acks_late": False,
                          "exception_classes": {"ConnectionError": j + 1},
                          "task_ids": [str(uuid.uuid4()) for _ in range(3)],
                          "window_seconds": 600.0},
                count=j + 3))
        out[practice] = (severity, conds)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(n: int, port: int, ready: threading.Event) -> None:
    asyncio.set_event_loop(asyncio.new_event_loop())
    loop = IOLoop.current()
    enable()
    opts = types.SimpleNamespace(**{**tornado_options.as_dict(), "enable_events": False,
                                    "basic_auth": [], "auth": "", "url_prefix": ""})
    capp = Celery("bench", broker="memory://", set_as_current=False)
    app = PluginFlower(capp=capp, options=opts, io_loop=loop, plugins=["flower_practices"],
                       **{**flower_settings, "cookie_secret": "bench"})
    engine = app.flower_practices.engine
    now = time.time()
    labels = types.SimpleNamespace(queue_label=lambda q: q or "", task_label=lambda t: t or "",
                                   worker_label=lambda w: w or "")
    for practice, (severity, conds) in findings(n).items():
        engine.findings.update(practice, severity, conds, now - 3600, 600.0, labels)
        engine.findings.update(practice, severity, conds, now, 600.0, labels)
    app.listen(port, address="127.0.0.1")
    ready.set()
    loop.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--findings", type=int, default=500)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args(argv)
    port = free_port()
    ready = threading.Event()
    threading.Thread(target=serve, args=(args.findings, port, ready), daemon=True).start()
    ready.wait(30)
    url = f"http://127.0.0.1:{port}/practices"
    render, dcl, load = [], [], []
    with Browser(1400, 1000) as browser:
        for _ in range(args.runs):
            browser.goto(url)
            render.append(browser.evaluate(
                "performance.getEntriesByName('fp-render')[0].duration"))
            nav = browser.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
            nav = json.loads(nav)
            dcl.append(nav["domContentLoadedEventEnd"])
            load.append(nav["loadEventEnd"])
        shown = browser.evaluate("document.querySelectorAll('tr.fp-row').length")
        groups = browser.evaluate("document.querySelectorAll('details.fp-group').length")
        total = browser.evaluate("document.getElementById('fp-total').textContent")
        open_all = browser.evaluate(
            "(() => { const t = performance.now();"
            " document.querySelectorAll('details.fp-group').forEach(d => d.open = true);"
            " return new Promise(r => setTimeout(() => requestAnimationFrame(() =>"
            " r(performance.now() - t)), 0)); })()")
        all_rows = browser.evaluate("document.querySelectorAll('tr.fp-row').length")
        if args.screenshot:
            # as loaded (big groups collapsed), with the largest warning group opened
            browser.evaluate("document.querySelectorAll('details.fp-group').forEach("
                             "d => d.open = d.dataset.practice === 'retryless_failure')")
            browser.evaluate("new Promise(r => setTimeout(r, 100))")
            browser.screenshot(args.screenshot)
        keystroke = browser.evaluate(
            "(() => { const f = document.getElementById('fp-filter'); const t = performance.now();"
            " f.value = 'job_01'; f.dispatchEvent(new Event('input'));"
            " return performance.now() - t; })()")
        filtered = browser.evaluate("document.querySelectorAll('tr.fp-row').length")
        browser.evaluate("(() => { const f = document.getElementById('fp-filter');"
                         " f.value = ''; f.dispatchEvent(new Event('input')); })()")
        before = browser.evaluate("document.body.dataset.fpRendered")
        t0 = time.perf_counter()
        browser.wait(f"document.body.dataset.fpRendered !== {json.dumps(before)}", timeout=30)
        refresh_cycle = browser.evaluate(
            "performance.getEntriesByName('fp-render').slice(-1)[0].duration")
        waited = time.perf_counter() - t0
    med = statistics.median
    print(f"{total}; {groups} groups, {shown} rows built (groups of more than 10 collapsed)")
    print(f"fp-render (JSON -> DOM): median {med(render):.1f} ms, max {max(render):.1f} ms "
          f"({args.runs} loads)")
    print(f"DOMContentLoaded: median {med(dcl):.0f} ms; load event end: median {med(load):.0f} ms")
    print(f"opening every group ({all_rows} rows built, to the next frame): {open_all:.0f} ms")
    print(f"filter keystroke ('job_01', {filtered} rows shown, groups opened): {keystroke:.1f} ms")
    print(f"background refresh render: {refresh_cycle:.1f} ms (next refresh came {waited:.1f} s "
          "after the filter was cleared)")
    ok = med(load) < 1000.0
    print("target: 500 findings render in < 1 s (load event end):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
