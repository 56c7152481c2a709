"""The Practices page in headless Chromium (tests/support/browser.py: DevTools protocol)
against stock ``celery flower --plugins=flower_practices``, a real worker and a private
redis-server: a new finding appears without a reload, the filter narrows the rows, every
link from a finding into Flower answers 200, and the stale banner shows when the broker
stops; and, in-process, that hostile names render as text. ``FP_SAVE_SCREENSHOT=1`` also
writes docs/img/practices-live.png."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
import types
import urllib.error
import urllib.request
from urllib.parse import urljoin

import pytest
from celery import Celery
from flower.urls import settings as flower_settings
from tornado.ioloop import IOLoop
from tornado.options import options as tornado_options

from flower_practices.findings import Condition
from flower_practices.flower_plugin.host import PluginFlower, enable
from tests.apps.models import User
from tests.conftest import make_producer
from tests.support.brokers import in_ci
from tests.support.exporter import free_port, wait_for
from tests.support.worker import ROOT, WorkerProcess
from tests.test_flower_plugin_integration import FlowerProcess

pytestmark = [pytest.mark.slow, pytest.mark.redis]

PRACTICES_TOML = """
[exporter]
evaluation_interval = 0.5
probe_interval = 1.0

[practices.lost_task]
grace_seconds = 1
"""
PICKLE_AS_ROOT = {"C_FORCE_ROOT": "1"}
NO_RELOAD = "window.fpNoReload === true"


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def groups(browser) -> list[str]:
    return browser.evaluate(
        "Array.from(document.querySelectorAll('#fp-groups details.fp-group'))"
        ".map(d => d.dataset.practice)")


@pytest.fixture(scope="module")
def env(private_redis_module, tmp_path_factory):
    try:
        from tests.support.browser import CHROMIUM, Browser
    except ImportError as exc:  # pragma: no cover - tornado is a dependency
        pytest.fail(str(exc))
    if CHROMIUM is None:
        if in_ci():
            pytest.fail("chromium is not installed (CI=true: the page tests must run)")
        pytest.skip("chromium is not installed")
    broker = private_redis_module["url"]
    workdir = tmp_path_factory.mktemp("browser")
    config = workdir / "practices.toml"
    config.write_text(PRACTICES_TOML)
    producer = make_producer(broker)
    worker = WorkerProcess("tests.apps.bad_tasks", broker, queues="celery",
                           env=PICKLE_AS_ROOT).start(producer)
    doomed_name = f"doomed{os.getpid()}@fp-test"
    workers = [worker]
    flower = browser = None
    try:
        flower = FlowerProcess(broker, ["flower", "--plugins=flower_practices",
                                        f"--practices_config={config}"], workdir)
        worker_up = f'celery_worker_up{{worker="{worker.name}"}} 1.0'
        wait_for(lambda: worker_up in flower.get("/metrics")[1], timeout=40,
                 message=f"Flower to receive the worker's heartbeats\n{flower.output()}")
        browser = Browser()
        yield {"flower": flower, "browser": browser, "producer": producer, "broker": broker,
               "worker": worker, "workers": workers, "doomed": doomed_name,
               "redis": private_redis_module}
    finally:
        if browser is not None:
            browser.close()
        if flower is not None:
            flower.stop()
        for w in workers:
            w.kill()


def test_a_new_finding_appears_without_a_reload(env):
    flower, browser = env["flower"], env["browser"]
    browser.goto(flower.url("/practices"))
    browser.evaluate("window.fpNoReload = true")
    assert "retryless_failure" not in groups(browser)
    for i in range(2):
        env["producer"].send_task("bad.fetch", args=(i,))
    browser.wait(f"{NO_RELOAD} && !!document.querySelector("
                 "'details.fp-group[data-practice=\"retryless_failure\"]')", timeout=40,
                 message="retryless_failure on the open page")
    assert re.fullmatch(r"updated \d\d:\d\d:\d\d",
                        browser.evaluate("document.getElementById('fp-updated').textContent"))
    row = browser.evaluate("document.querySelector("
                           "'tr.fp-row[data-practice=\"retryless_failure\"]').textContent")
    assert "bad.fetch" in row and "upstream refused" not in row  # never exception messages
    assert browser.evaluate("document.getElementById('fp-stale').hidden") is True


def test_the_filter_narrows_the_rows(env):
    browser = env["browser"]
    env["producer"].send_task("bad.process", args=(User(1, "alice"),), serializer="pickle")
    env["producer"].send_task("bad.compute", args=(1,))
    browser.wait(f"{NO_RELOAD} && !!document.querySelector("
                 "'details.fp-group[data-practice=\"orm_object_argument\"]')", timeout=40,
                 message="orm_object_argument on the open page")
    before = groups(browser)
    assert len(before) >= 2
    browser.evaluate("(() => { const f = document.getElementById('fp-filter');"
                     " f.value = 'bad.fetch'; f.dispatchEvent(new Event('input')); })()")
    after = groups(browser)
    rows = browser.evaluate("Array.from(document.querySelectorAll('tr.fp-row'))"
                            ".map(r => r.textContent)")
    assert "retryless_failure" in after and len(after) < len(before)
    assert rows and all("bad.fetch" in r for r in rows)
    assert "1 finding of" in browser.evaluate("document.getElementById('fp-shown').textContent")
    # severity toggles: warnings off hides the (warning) retryless_failure group
    browser.evaluate("document.getElementById('fp-sev-warning').click()")
    assert "retryless_failure" not in groups(browser)
    browser.evaluate("(() => { document.getElementById('fp-sev-warning').click();"
                     " const f = document.getElementById('fp-filter');"
                     " f.value = ''; f.dispatchEvent(new Event('input')); })()")
    assert groups(browser) == before
    # sort by count: the practice with the most occurrences first
    browser.evaluate("(() => { const s = document.getElementById('fp-sort');"
                     " s.value = 'count'; s.dispatchEvent(new Event('change')); })()")
    counts = browser.evaluate(
        "Array.from(document.querySelectorAll('tr.fp-row td.text-end')).map(td => td.textContent)")
    counts = [int(c.replace(",", "")) for c in counts]
    assert counts == sorted(counts, reverse=True) and len(counts) >= 2
    assert "alice" not in browser.evaluate("document.body.textContent")


def test_every_link_from_a_finding_answers_200(env):
    """Including lost_task's task ids: a task killed with its worker, which then restarts."""
    flower, browser, producer = env["flower"], env["browser"], env["producer"]
    doomed = WorkerProcess("tests.apps.bad_tasks", env["broker"], queues="doomed",
                           name=env["doomed"], concurrency=1, env=PICKLE_AS_ROOT)
    env["workers"].append(doomed)
    doomed.start(producer)
    producer.send_task("bad.slow", args=(60,), queue="doomed")
    started = 'celery_task_events_total{queue="doomed",task="bad.slow",type="started"} 1.0'
    wait_for(lambda: started in flower.get("/metrics")[1],
        timeout=40, message="bad.slow started on the doomed worker")
    doomed.kill()  # SIGKILL mid-task, then the same worker comes back
    again = WorkerProcess("tests.apps.bad_tasks", env["broker"], queues="doomed",
                          name=env["doomed"], concurrency=1, env=PICKLE_AS_ROOT)
    env["workers"].append(again)
    again.start(producer)
    browser.wait(f"{NO_RELOAD} && !!document.querySelector("
                 "'details.fp-group[data-practice=\"lost_task\"]')", timeout=60,
                 message="lost_task on the open page")
    # open every group (rows are built when a group opens), then collect the links
    browser.evaluate("document.querySelectorAll('details.fp-group').forEach(d => d.open = true)")
    browser.wait("Array.from(document.querySelectorAll('details.fp-group'))"
                 ".every(d => d.dataset.filled === '1')", message="every group filled")
    hrefs = browser.evaluate("Array.from(document.querySelectorAll('#fp-groups tr.fp-row a'))"
                             ".map(a => a.getAttribute('href'))")
    kinds = {re.sub(r"^/([a-z]+)(/practices)?.*$", r"\1", h) for h in hrefs}
    assert {"task", "tasks", "worker", "broker", "practices"} <= kinds, hrefs
    lost_row = browser.evaluate("document.querySelector("
                                "'tr.fp-row[data-practice=\"lost_task\"]').textContent")
    assert "lost 1 task" in lost_row and "acks late no" in lost_row  # evidence in words
    lost = json.loads(flower.get("/api/practices")[1])
    [finding] = [f for f in lost["findings"] if f["practice"] == "lost_task"]
    [task_id] = finding["evidence"]["task_ids"]
    assert f"/task/{task_id}" in hrefs
    assert any(h.startswith("/practices/runbooks/lost_task?queue=doomed&task=bad.slow&worker=")
               for h in hrefs)
    for href in sorted(set(hrefs)):
        # Flower 2.0/2.1 inspect a worker in the background on the first visit of its page
        # and answer 404 until the reply is cached (Flower's own worker links do the same)
        wait_for(lambda h=href: status_of(urljoin(flower.url("/practices"), h)) == 200,
                 timeout=30, message=f"{href} to answer 200")
    # the runbook's commands name the finding's worker
    runbook = next(h for h in hrefs if h.startswith("/practices/runbooks/lost_task?"))
    body = urllib.request.urlopen(urljoin(flower.url("/"), runbook), timeout=20).read().decode()
    assert f'celery_worker_up{{worker="{env["doomed"]}"}}' in body
    save = os.environ.get("FP_SAVE_SCREENSHOT")
    if save:
        from tests.support.browser import Browser
        with Browser(1400, 1000) as shot:
            shot.goto(flower.url("/practices"))
            shot.screenshot(ROOT / "docs" / "img" / "practices-live.png")


def test_refreshes_pause_while_the_tab_is_hidden(env):
    flower, browser = env["flower"], env["browser"]
    browser.goto(flower.url("/practices"))
    # count the page's requests, then hide the tab (as the browser reports it to the page)
    browser.evaluate("""(() => {
        window.fpFetches = 0;
        const original = window.fetch;
        window.fetch = function () { window.fpFetches++; return original.apply(this, arguments); };
        window.fpHidden = false;
        Object.defineProperty(document, 'visibilityState', {
            configurable: true, get: () => window.fpHidden ? 'hidden' : 'visible'});
    })()""")
    browser.wait("window.fpFetches >= 1", timeout=20, message="a refresh while visible")
    browser.evaluate("window.fpHidden = true;"
                     " document.dispatchEvent(new Event('visibilitychange'));"
                     " window.fpFetchesHidden = window.fpFetches")
    # two refresh periods pass hidden (the page's own timer, measured in the page)
    hidden_for = browser.evaluate(
        "new Promise(r => { const t = performance.now();"
        " setTimeout(() => r(performance.now() - t), 2.2 * 5000); })")
    assert hidden_for >= 11000
    assert browser.evaluate("window.fpFetches - window.fpFetchesHidden") <= 1  # one in flight
    stale_before = browser.evaluate("window.fpFetches")
    browser.evaluate("window.fpHidden = false;"
                     " document.dispatchEvent(new Event('visibilitychange'))")
    browser.wait(f"window.fpFetches > {stale_before}", timeout=5,
                 message="an immediate refresh when the tab is shown again")


def test_the_stale_banner_shows_when_the_broker_stops(env):
    flower, browser = env["flower"], env["browser"]
    browser.goto(flower.url("/practices"))
    assert browser.evaluate("document.getElementById('fp-stale').hidden") is True
    stopped = time.time()
    env["redis"]["kill"]()
    text = browser.wait("(() => { const b = document.getElementById('fp-stale');"
                        " return b.hidden ? '' : b.textContent; })()", timeout=60,
                        message="the stale banner")
    assert text.startswith("Stale \u2014 event stream disconnected since ")
    since = json.loads(flower.get("/api/practices")[1])["stream"]["disconnected_since"]
    assert since >= stopped - 1
    assert browser.evaluate("document.getElementById('fp-stream').textContent") == "not connected"


HOSTILE_TASK = '<img src=x onerror="window.fpXss=1">'
HOSTILE_QUEUE = '"><script>window.fpXss=2</script>'
HOSTILE_WORKER = "javascript:window.fpXss=3"


def _serve_hostile(port: int, ready: threading.Event, stop: list) -> None:
    """An in-process Flower with the plugin holding one finding made of hostile names."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    loop = IOLoop.current()
    opts = types.SimpleNamespace(**{**tornado_options.as_dict(), "enable_events": False,
                                    "basic_auth": [], "auth": "", "url_prefix": ""})
    app = PluginFlower(capp=Celery("hostile", broker="memory://", set_as_current=False),
                       options=opts, io_loop=loop, plugins=["flower_practices"],
                       **{**flower_settings, "cookie_secret": "x"})
    labels = types.SimpleNamespace(queue_label=str, task_label=str, worker_label=str)
    cond = Condition(summary="</script><b>bold?</b>", queue=HOSTILE_QUEUE, task=HOSTILE_TASK,
                     worker=HOSTILE_WORKER,
                     evidence={"<b>key</b>": "<i>value</i>", "task_ids": ['"><img src=x>']})
    app.flower_practices.engine.findings.update("lost_task", "critical", [cond], time.time(),
                                                600.0, labels)
    app.listen(port, address="127.0.0.1")
    stop.append(lambda: loop.add_callback(loop.stop))
    ready.set()
    loop.start()
    app.executor.shutdown(wait=False)


def test_hostile_names_render_as_text():
    """Names from the wire are text on the page and in its links, never markup or script."""
    from tests.support.browser import CHROMIUM, Browser
    if CHROMIUM is None:
        if in_ci():
            pytest.fail("chromium is not installed (CI=true: the page tests must run)")
        pytest.skip("chromium is not installed")
    enable()
    port, ready, stop = free_port(), threading.Event(), []
    threading.Thread(target=_serve_hostile, args=(port, ready, stop), daemon=True).start()
    assert ready.wait(30)
    try:
        with Browser() as browser:
            browser.goto(f"http://127.0.0.1:{port}/practices")
            browser.wait("document.querySelectorAll('tr.fp-row').length === 1",
                         message="the hostile finding's row")
            assert browser.evaluate("typeof window.fpXss") == "undefined"
            assert browser.evaluate("document.querySelectorAll('#fp-groups img, "
                                    "#fp-groups script, #fp-groups b, #fp-groups i').length") == 0
            text = browser.evaluate("document.querySelector('tr.fp-row').textContent")
            for literal in (HOSTILE_TASK, HOSTILE_QUEUE, HOSTILE_WORKER, "</script><b>bold?</b>",
                            "<b>key</b>", "<i>value</i>"):
                assert literal in text
            hrefs = browser.evaluate("Array.from(document.querySelectorAll('tr.fp-row a'))"
                                     ".map(a => a.getAttribute('href'))")
            assert hrefs and all(h.startswith("/") for h in hrefs), hrefs
            assert "/worker/javascript%3Awindow.fpXss%3D3" in hrefs
    finally:
        for fn in stop:
            fn()
