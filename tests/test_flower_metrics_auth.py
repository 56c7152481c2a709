"""``--practices_metrics_auth``: the real ``celery flower-practices`` with ``--basic_auth``.

Off (the default), Flower's ``/metrics`` is open as in stock Flower; on, it answers 401
without credentials and 200 with them, and still carries the plugin's series. On without
any Flower auth configured, Flower refuses to start.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.exporter import free_port, wait_for
from tests.support.http import get_text
from tests.support.process import log_tail, stop_process
from tests.support.worker import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.redis]

USER, PASSWORD = "admin", "s3cret-flower"


class Flower:
    def __init__(self, broker: str, *args: str) -> None:
        self.port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="fp-flower-auth-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "celery", "--broker", broker, "flower-practices",
               *args, f"--port={self.port}", "--address=127.0.0.1"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=str(ROOT))

    def up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"Flower exited early:\n{self.output()}")
        return self.get("/healthcheck")[0] == 200

    def get(self, path: str, auth: bool = False) -> tuple[int, str]:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return get_text(f"http://127.0.0.1:{self.port}{path}", timeout=10,
                        headers={"Authorization": f"Basic {token}"} if auth else None)

    def output(self) -> str:
        return log_tail(self.log)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.mark.parametrize("protected", [True, False], ids=["option-on", "option-off"])
def test_flower_metrics_behind_flower_auth_only_with_the_option(redis_url: str,
                                                                protected: bool) -> None:
    args = [f"--basic_auth={USER}:{PASSWORD}"]
    if protected:
        args.append("--practices_metrics_auth=true")
    flower = Flower(redis_url, *args)
    try:
        wait_for(flower.up, timeout=40, message="Flower to listen")
        # the plugin's pages are behind Flower's auth in both modes
        assert flower.get("/practices")[0] == 401
        status, body = flower.get("/metrics")
        if protected:
            assert status == 401, body[:200]
            assert flower.get("/metrics", auth=True)[0] == 200
        else:
            assert status == 200  # stock Flower: open
        status, body = flower.get("/metrics", auth=True)
        assert status == 200 and "flower_practices_events_total" in body
        # open in both modes (documented): 200 once the event stream is connected
        wait_for(lambda: flower.get("/healthz")[0] == 200, timeout=60,
                 message="/healthz 200 without credentials")
    finally:
        flower.stop()


def test_metrics_auth_without_any_flower_auth_refuses_to_start(redis_url: str) -> None:
    flower = Flower(redis_url, "--practices_metrics_auth=true")
    try:
        flower.proc.wait(60)
        assert flower.proc.returncode not in (0, None)
        assert "--practices_metrics_auth needs Flower's --basic_auth or --auth" in flower.output()
    finally:
        flower.stop()
