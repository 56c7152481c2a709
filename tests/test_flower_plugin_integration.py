"""The real ``celery flower-practices`` and stock ``celery flower --plugins=flower_practices``
(command line, ``FLOWER_PLUGINS``, ``flowerconfig.py``, ``python -m flower``) against real
Redis with a real worker: findings on /practices, in /api/practices (without
``FLOWER_UNAUTHENTICATED_API``) and in Flower's /metrics; a headless Chromium screenshot."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
from flower import __version__ as flower_version

from tests.apps.models import User
from tests.conftest import make_producer
from tests.support.brokers import fresh_redis_url, in_ci, release_redis_dbs
from tests.support.exporter import free_port, wait_for
from tests.support.http import get_text
from tests.support.process import log_tail, stop_process
from tests.support.worker import ROOT, WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.redis]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = ROOT / "docs" / "img" / "practices-page.png"

PRACTICES_TOML = """
[exporter]
evaluation_interval = 0.5
probe_interval = 1.0
"""


def _default_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class FlowerProcess:
    """A Flower subprocess (``celery -A tests.apps.bad_tasks --broker URL <args>``)."""

    def __init__(self, broker: str, args: list[str], cwd: Path, prefix: str = "",
                 module: str = "celery", env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.prefix = prefix
        self.log = Path(tempfile.mkstemp(prefix="fp-flower-", suffix=".log")[1])
        cmd = [sys.executable, "-m", module, "-A", "tests.apps.bad_tasks", "--broker", broker,
               *args, f"--port={self.port}", "--address=127.0.0.1"]
        # keep PYTHONPATH: tests/test_flower_versions.py puts another Flower release first
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "FP_TEST_BROKER": broker, "PYTHONPATH": pythonpath, **(env or {})}
        env.pop("FLOWER_UNAUTHENTICATED_API", None)  # /api/practices must not need it
        with open(self.log, "wb") as out:
            # SIGHUP as a terminal would leave it: a suite started under nohup passes
            # SIG_IGN on, and the plugin rightly keeps an ignored SIGHUP ignored
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=str(cwd), preexec_fn=_default_sighup)
        wait_for(self._up, timeout=40, message=f"Flower to listen:\n{self.output()}")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"Flower exited early:\n{self.output()}")
        return self.get(f"{self.prefix}/healthcheck")[0] == 200

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        return get_text(self.url(path))

    def output(self) -> str:
        return log_tail(self.log)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """Worker + ``celery flower-practices`` on an isolated Redis database, with a workload
    that breaks ``retryless_failure`` (ConnectionError, never retried),
    ``single_default_queue`` (several task names, all in the default queue) and
    ``orm_object_argument`` (a model instance pickled into the arguments)."""
    broker = fresh_redis_url()
    workdir = tmp_path_factory.mktemp("flower")
    config = workdir / "practices.toml"
    config.write_text(PRACTICES_TOML)
    producer = make_producer(broker)
    # bad_tasks accepts pickle (that is the point); the test container runs as root
    worker = WorkerProcess("tests.apps.bad_tasks", broker, queues="celery",
                           env={"C_FORCE_ROOT": "1"}).start(producer)
    flower = None
    try:
        flower = FlowerProcess(broker, ["flower-practices", f"--practices_config={config}"],
                               workdir)
        # Events are pub/sub: send the workload only once Flower's receiver is subscribed,
        # i.e. once it has seen the worker's heartbeat.
        worker_up = f'celery_worker_up{{worker="{worker.name}"}} 1.0'
        wait_for(lambda: worker_up in flower.get("/metrics")[1], timeout=40,
                 message=f"Flower to receive the worker's heartbeats\n{flower.output()}")
        for i in range(3):
            producer.send_task("bad.compute", args=(i,))
        producer.send_task("bad.fetch", args=(7,))
        producer.send_task("bad.fetch", args=(8,))
        producer.send_task("bad.process", args=(User(1, "alice"),), serializer="pickle")
        yield flower, worker, producer, broker
    finally:
        if flower is not None:
            flower.stop()
        worker.stop()
        release_redis_dbs(broker)


def practices_found(flower: FlowerProcess) -> set[str]:
    """Practice ids of the active findings in /api/practices (empty when it does not answer)."""
    status, body = flower.get("/api/practices")
    return {f["practice"] for f in json.loads(body)["findings"]} if status == 200 else set()


def test_finding_on_the_page_api_and_metrics(running):
    flower, worker, _, _ = running
    for practice in ("retryless_failure", "single_default_queue"):
        wait_for(lambda p=practice: p in practices_found(flower),
                 timeout=40, message=f"{practice} on /practices\n{flower.output()}")
    status, body = flower.get("/practices")
    assert status == 200
    assert "bad.fetch" in body and "ConnectionError" in body  # evidence: names and classes
    assert "upstream refused" not in body  # never exception messages
    assert 'aria-current="page">Practices</a>' in body
    assert '"runbook": "/practices/runbooks/"' in body  # the script's link base

    payload = json.loads(flower.get("/api/practices")[1])
    found = [f for f in payload["findings"] if f["practice"] == "retryless_failure"]
    assert found and found[0]["task"] == "bad.fetch" and found[0]["queue"] == "celery"
    assert payload["coverage"]["retryless_failure"] == "active"
    # both bad.fetch failures and all three bad.compute successes, once they have arrived
    wait_for(lambda: ('celery_practice_violations_total{practice="retryless_failure",'
                      'queue="celery",task="bad.fetch"} 2.0') in flower.get("/metrics")[1],
             message="two retry-less failures counted")
    wait_for(lambda: ('celery_task_events_total{queue="celery",task="bad.compute",'
                      'type="succeeded"} 3.0') in flower.get("/metrics")[1],
             message="three bad.compute successes counted")
    # the model instance in bad.process's arguments: class and position, never the values
    wait_for(lambda: "orm_object_argument" in practices_found(flower),
             timeout=40, message="orm_object_argument on /practices")
    orm = [f for f in json.loads(flower.get("/api/practices")[1])["findings"]
           if f["practice"] == "orm_object_argument"]
    assert orm and orm[0]["task"] == "bad.process"
    assert orm[0]["evidence"]["arguments"] == [{"argument": "0", "class": "User"}]
    metrics = flower.get("/metrics")[1]
    assert "alice" not in metrics and "alice" not in flower.get("/practices")[1]
    assert ('celery_practice_violation{practice="retryless_failure",queue="celery",'
            'severity="warning",task="bad.fetch",worker=""} 1.0') in metrics
    assert 'celery_practice_violation{practice="single_default_queue"' in metrics
    assert "flower_events_total" in metrics  # Flower's own metrics, same endpoint
    # probes ran in the executor: the worker's active_queues give the consumer count
    wait_for(lambda: 'celery_queue_consumers{queue="celery"} 1.0' in flower.get("/metrics")[1],
             message="celery_queue_consumers from the probes")
    assert flower.get("/healthz")[0] == 200
    # the Flower release that really ran (tests/test_flower_versions.py sets the expectation)
    expected = os.environ.get("FP_EXPECT_FLOWER_VERSION", flower_version)
    assert f"Flower plugins active: flower_practices (Flower {expected})" in flower.output()


def _png_info(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the decompressed image data)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return width, height, len(set(raw[:: max(1, len(raw) // 200_000)]))


def screenshot(url: str, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="fp-chromium-") as profile:
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
             f"--screenshot={out}", "--window-size=1280,900", url],
            capture_output=True, timeout=90, check=False)


def test_screenshot_of_the_practices_page(running, tmp_path):
    if CHROMIUM is None:
        if in_ci():
            pytest.fail("chromium is not installed (CI=true: the screenshot test must run)")
        pytest.skip("chromium is not installed")
    flower = running[0]
    wait_for(lambda: "retryless_failure" in practices_found(flower),
             timeout=40, message="a finding to show")
    out = tmp_path / "practices.png"
    screenshot(flower.url("/practices"), out)
    assert out.is_file(), "chromium wrote no screenshot"
    width, height, distinct = _png_info(out)
    assert (width, height) == (1280, 900)
    assert distinct > 30, "screenshot looks blank"
    # and what was rendered is the Practices page with the finding, not an error page
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         flower.url("/practices")], capture_output=True, text=True, timeout=90).stdout
    assert 'data-practice="retryless_failure"' in dom and "practices-coverage" in dom
    save = os.environ.get("FP_SAVE_SCREENSHOT")  # "1": the README image; else a path
    if save:
        target = SCREENSHOT if save == "1" else Path(save)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, target)


STOCK_FORMS = {
    "command line": dict(args=["flower", "--plugins=flower_practices"]),
    "environment": dict(args=["flower"], env={"FLOWER_PLUGINS": "flower_practices"}),
    "flowerconfig list": dict(args=["flower"], conf='plugins = ["flower_practices"]\n'),
    "flowerconfig string": dict(args=["flower"], conf='plugins = "flower_practices"\n'),
    "python -m flower": dict(args=["flower", "--plugins=flower_practices"], module="flower"),
    # flowerconfig.py files written for earlier releases keep working
    "flowerconfig import": dict(args=["flower"], conf=(
        "import flower_practices.flower_plugin.activate  # noqa: F401\n")),
}


@pytest.mark.parametrize("form", list(STOCK_FORMS))
def test_stock_flower_with_plugins(running, tmp_path, form):
    """Stock Flower started the ways Flower users start it gets the plugin."""
    _, worker, _, broker = running
    spec = STOCK_FORMS[form]
    if "conf" in spec:
        (tmp_path / "flowerconfig.py").write_text(spec["conf"])
    flower = FlowerProcess(broker, spec["args"], tmp_path, module=spec.get("module", "celery"),
                           env=spec.get("env"))
    try:
        status, body = flower.get("/practices")
        assert status == 200 and "practices-coverage" in body, flower.output()
        assert ">Practices</a>" in flower.get("/workers")[1]
        status, body = flower.get("/api/practices")
        assert status == 200, body  # no FLOWER_UNAUTHENTICATED_API needed
        assert json.loads(body)["coverage"]["retryless_failure"] == "active"
        worker_up = f'celery_worker_up{{worker="{worker.name}"}} 1.0'
        wait_for(lambda: worker_up in flower.get("/metrics")[1],
                 message="our metrics, fed by stock Flower's events, in its /metrics")
        expected = os.environ.get("FP_EXPECT_FLOWER_VERSION", flower_version)
        assert f"Flower plugins active: flower_practices (Flower {expected})" in flower.output()
    finally:
        flower.stop()


def test_stock_flower_without_plugins_is_plain_flower(running, tmp_path):
    _, _, _, broker = running
    flower = FlowerProcess(broker, ["flower"], tmp_path)
    try:
        assert flower.get("/practices")[0] == 404
        assert ">Practices</a>" not in flower.get("/workers")[1]
        assert "celery_practice" not in flower.get("/metrics")[1]
        assert "Flower plugins active" not in flower.output()
    finally:
        flower.stop()


def test_sighup_stops_flower_cleanly(redis_url, tmp_path):
    """Documented choice, as for the exporter: SIGHUP stops cleanly (exit 0), no reload."""
    flower = FlowerProcess(redis_url, ["flower-practices"], tmp_path)
    try:
        wait_for(lambda: flower.get("/healthz")[0] == 200, timeout=40,
                 message=f"Flower's /healthz 200\n{flower.output()}")
        flower.proc.send_signal(signal.SIGHUP)
        assert flower.proc.wait(20) == 0, flower.output()
        assert "received SIGHUP: stopping" in flower.output()
        assert "Traceback" not in flower.output()
    finally:
        flower.stop()
