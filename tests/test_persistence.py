"""Findings survive restarts: the real ``flower-practices exporter`` with a real worker,
killed with SIGKILL and started again on the same state directory; the state file itself
(corrupt files, two brokers in one directory, writes only on change)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flower_practices.findings import Condition
from flower_practices.store import Snapshot, StateStore, state_file_name
from tests.conftest import make_producer
from tests.support.exporter import free_port, wait_for
from tests.support.process import kill_process, log_tail, stop_process
from tests.support.worker import ROOT, WorkerProcess

CLI = [sys.executable, "-m", "flower_practices"]

CONFIG = """
[exporter]
evaluation_interval = 0.5
probe_interval = 1.0

[practices.lost_task]
grace_seconds = 1

[practices.queue_without_consumer]
grace_seconds = 1
"""


class ExporterProcess:
    """``flower-practices exporter`` as a subprocess on a fixed port and state dir."""

    def __init__(self, broker: str, state_dir: str | None, config: Path, port: int,
                 env: dict[str, str] | None = None) -> None:
        self.log = Path(tempfile.mkstemp(prefix="fp-exporter-", suffix=".log")[1])
        self.port = port
        args = ["exporter", "--broker", broker, "--host", "127.0.0.1", "--port", str(port),
                "--config", str(config)]
        if state_dir is not None:
            args += ["--state-dir", state_dir]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                CLI + args, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT),
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def answering(self) -> bool:
        return self.get("/api/practices")[0] == 200

    def get(self, path: str) -> tuple[int, str]:
        if self.proc.poll() is not None:
            raise AssertionError(f"exporter exited:\n{self.output()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError:
            return 0, ""

    def findings(self) -> dict[tuple, dict] | None:
        status, body = self.get("/api/practices")
        if status != 200:
            return None
        return {(f["practice"], f["queue"], f["task"], f["worker"]): f
                for f in json.loads(body)["findings"]}

    def metric(self, name: str, **labels: str) -> float | None:
        """Sum of ``name``'s samples matching ``labels``; None when none matches."""
        status, body = self.get("/metrics")
        found = None
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    found = (found or 0.0) + sample.value
        return found

    def output(self) -> str:
        return log_tail(self.log, 5000)

    def kill9(self) -> None:
        kill_process(self.proc)

    def stop(self) -> None:
        stop_process(self.proc)


def saved_practices(path: Path) -> set[str]:
    """Practices in the state file, read as another process would (WAL: no blocking)."""
    if not path.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2) as conn:
            return {row[0] for row in conn.execute("SELECT practice FROM findings")}
    except sqlite3.Error:
        return set()


@pytest.mark.slow
@pytest.mark.redis
def test_kill9_and_restart_brings_back_the_same_findings(redis_url: str,
                                                          tmp_path: Path) -> None:
    """A worker killed mid-task (lost_task) and a queue nobody consumes
    (queue_without_consumer): after kill -9 and a restart on the same state directory,
    both findings are back at once with the same first_seen and count; the lost task is
    neither forgotten nor counted again, and both findings stay."""
    config = tmp_path / "practices.toml"
    config.write_text(CONFIG)
    state_dir = tmp_path / "state"
    state_file = state_dir / state_file_name(redis_url)
    port = free_port()
    producer = make_producer(redis_url)
    exporter = ExporterProcess(redis_url, str(state_dir), config, port)
    doomed = WorkerProcess("tests.apps.bad_tasks", redis_url, queues="doomed",
                           name=f"doomed{int(time.time()) % 10000}@fp-persist", concurrency=1,
                           env={"C_FORCE_ROOT": "1"})
    try:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, timeout=30,
                 message="exporter healthy")
        doomed.start(producer)
        wait_for(lambda: exporter.metric("celery_worker_up", worker=doomed.name) == 1,
                 timeout=30, message="the exporter sees the doomed worker")
        producer.send_task("bad.slow", args=(120,), queue="doomed")
        producer.send_task("bad.compute", args=(1,), queue="orphan")
        wait_for(lambda: exporter.metric(
            "celery_task_events_total", queue="doomed", task="bad.slow", type="started") == 1,
            timeout=30, message="the slow task started")
        doomed.kill()  # SIGKILL mid-task: no task result, no worker-offline
        keys = {("lost_task", "doomed", "bad.slow", doomed.name),
                ("queue_without_consumer", "orphan", None, None)}
        before = wait_for(lambda: (lambda f: f if f and keys <= set(f) else None)(
            exporter.findings()), timeout=60, message="both findings")
        wait_for(lambda: saved_practices(state_file) >= {"lost_task", "queue_without_consumer"},
                 timeout=10, message="both findings in the state file")
        lost_counted = exporter.metric(
            "celery_practice_violations_total", practice="lost_task", queue="doomed",
            task="bad.slow")
        assert lost_counted == 1
        exporter.kill9()
        restarted = time.time()

        exporter = ExporterProcess(redis_url, str(state_dir), config, port)
        # restored before the server listens: the first answer already has them
        wait_for(exporter.answering, timeout=30, message="restarted exporter answers")
        after = exporter.findings()
        assert after is not None and keys <= set(after), (after, exporter.output())
        for key in keys:
            assert after[key]["first_seen"] == before[key]["first_seen"], key
            assert after[key]["count"] >= before[key]["count"] if key[0] != "lost_task" \
                else after[key]["count"] == before[key]["count"], key
        assert after[("lost_task", "doomed", "bad.slow", doomed.name)]["evidence"][
            "lost_tasks"] == 1
        # both rules confirm their finding again after the restart, same first_seen
        confirmed = wait_for(lambda: (lambda f: f if f and all(
            key in f and f[key]["last_seen"] > restarted for key in keys) else None)(
            exporter.findings()), timeout=30, message="findings confirmed after restart")
        for key in keys:
            assert confirmed[key]["first_seen"] == before[key]["first_seen"], key
        lost = confirmed[("lost_task", "doomed", "bad.slow", doomed.name)]
        assert lost["evidence"]["lost_tasks"] == 1 and lost["count"] == 1
        # the lost task was not lost a second time in this process
        assert exporter.metric(
            "celery_practice_violations_total", practice="lost_task", queue="doomed",
            task="bad.slow") in (None, 0.0)
        assert exporter.metric("flower_practices_state_errors_total", kind="load") == 0
        assert "Traceback" not in exporter.output()
    finally:
        doomed.kill()
        exporter.stop()


@pytest.mark.redis
def test_a_clean_run_restores_nothing(redis_url: str, tmp_path: Path) -> None:
    """Correct code leaves no finding behind: a restart on its state file shows none."""
    config = tmp_path / "practices.toml"
    config.write_text(CONFIG)
    state_dir = tmp_path / "state"
    port = free_port()
    exporter = ExporterProcess(redis_url, str(state_dir), config, port)
    try:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, timeout=30,
                 message="exporter healthy")
        wait_for(lambda: (state_dir / state_file_name(redis_url)).exists(), timeout=15,
                 message="the state file written after the first evaluation")
        exporter.kill9()
        exporter = ExporterProcess(redis_url, str(state_dir), config, port)
        wait_for(exporter.answering, timeout=30, message="restarted exporter answers")
        assert exporter.findings() == {}
    finally:
        exporter.stop()


@pytest.mark.redis
def test_corrupt_state_file_is_moved_aside_and_counted(redis_url: str, tmp_path: Path) -> None:
    config = tmp_path / "practices.toml"
    config.write_text(CONFIG)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state_file = state_dir / state_file_name(redis_url)
    state_file.write_bytes(b"this is not a database" * 100)
    exporter = ExporterProcess(redis_url, str(state_dir), config, free_port())
    try:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, timeout=30,
                 message="exporter healthy despite a corrupt state file")
        assert exporter.findings() == {}
        assert exporter.metric("flower_practices_state_errors_total", kind="load") == 1
        aside = list(state_dir.glob(state_file.name + ".corrupt-*"))
        assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
        # a fresh file replaces it after the first evaluation
        wait_for(lambda: saved_practices(state_file) == set() and state_file.exists()
                 and state_file.read_bytes().startswith(b"SQLite format 3"), timeout=15,
                 message="a new state file")
        assert "cannot be read" in exporter.output()
    finally:
        exporter.stop()


@pytest.mark.redis
def test_default_state_dir_and_disabling_it(redis_url: str, tmp_path: Path) -> None:
    """Without --state-dir the file goes to $XDG_STATE_HOME/flower-practices;
    ``--state-dir ''`` keeps nothing."""
    config = tmp_path / "p.toml"
    config.write_text(CONFIG)
    xdg = tmp_path / "xdg"
    env = {"XDG_STATE_HOME": str(xdg)}
    os_env_state = os.environ.pop("FLOWER_PRACTICES_STATE_DIR", None)  # conftest's "none"
    try:
        exporter = ExporterProcess(redis_url, None, config, free_port(), env=env)
    finally:
        if os_env_state is not None:
            os.environ["FLOWER_PRACTICES_STATE_DIR"] = os_env_state
    try:
        wait_for(lambda: (xdg / "flower-practices" / state_file_name(redis_url)).exists(),
                 timeout=30, message="the state file in the default directory")
    finally:
        exporter.stop()
    other = tmp_path / "xdg2"
    exporter = ExporterProcess(redis_url, "", config, free_port(),
                               env={"XDG_STATE_HOME": str(other)})
    try:
        wait_for(lambda: exporter.metric("flower_practices_evaluation_duration_seconds")
                 is not None, timeout=30, message="an evaluation")
        evaluated = exporter.metric("flower_practices_start_time_seconds")
        assert evaluated is not None and evaluated > 0
        assert exporter.metric("flower_practices_state_errors_total", kind="save") == 0
        assert not other.exists()
    finally:
        exporter.stop()


# -- the state file on its own -------------------------------------------------------------
class _Labels:
    queue_label = task_label = worker_label = staticmethod(lambda v: v)


def test_two_brokers_in_one_directory_do_not_mix(tmp_path: Path) -> None:
    a = StateStore(tmp_path, "redis://:secret@host-a:6379/0")
    b = StateStore(tmp_path, "redis://host-b:6379/0")
    assert a.path != b.path
    finding = {"practice": "lost_task", "queue": "q", "task": "t", "worker": "w",
               "severity": "critical", "summary": "s", "evidence": {"lost_tasks": 1},
               "first_seen": 100.0, "last_seen": 200.0, "count": 1}
    assert a.save(Snapshot(findings=[finding], memory={"lost_task": [["u", 1, "q", "t", "w",
                                                                       "r"]]}, saved_at=1.0))
    assert not a.save(Snapshot(findings=[finding], memory={"lost_task": [["u", 1, "q", "t",
                                                                           "w", "r"]]},
                               saved_at=2.0)), "unchanged: not written again"
    assert b.load().findings == []
    again = StateStore(tmp_path, "redis://:other-password@host-a:6379/0")
    assert again.path == a.path, "the password is not part of the key"
    loaded = again.load()
    assert loaded.findings == [finding]
    assert loaded.memory == {"lost_task": [["u", 1, "q", "t", "w", "r"]]}
    assert "secret" not in a.path.name
    with sqlite3.connect(a.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_engine_restores_findings_and_keeps_them_until_clear_after(tmp_path: Path) -> None:
    from flower_practices.config import Settings
    from flower_practices.engine import Engine
    from flower_practices.rules.base import Rule

    class Flaky(Rule):
        id = "retryless_failure"
        defaults = {"window_seconds": 600.0}
        holds = True
        fresh = 3  # occurrences this process counts before its first evaluation

        def evaluate(self, now):
            if Flaky.holds:
                if not self.occurred:
                    self.count(None, "t", Flaky.fresh)
                yield Condition(summary="x", task="t")

    store = StateStore(tmp_path, "redis://h/0")
    settings = Settings(clear_after_seconds=120.0)
    first = Engine(settings, broker_url="redis://h/0", rule_classes=[Flaky], store=store)
    first.evaluate(now=1000.0)
    first.evaluate(now=1010.0)
    saved = first.findings.active()[0]
    assert (saved.first_seen, saved.count) == (1000.0, 3)
    # restart 30 min later: the rule's window (600 s) counted from last_seen is over, so
    # the finding is kept clear_after (120 s) after the restart unless reported again
    Flaky.holds = False
    second = Engine(settings, broker_url="redis://h/0", rule_classes=[Flaky],
                    store=StateStore(tmp_path, "redis://h/0"))
    restored = second.findings.active()
    assert [(f.first_seen, f.count, f.last_seen) for f in restored] == [(1000.0, 3, 1010.0)]
    now = restored[0].restored_until
    second.evaluate(now=now + 60)
    assert len(second.findings.active()) == 1
    second.evaluate(now=now + 121)
    assert second.findings.active() == []
    # reported again after a restart: same first_seen, then the usual clearing
    Flaky.holds = True
    third = Engine(settings, broker_url="redis://h/0", rule_classes=[Flaky],
                   store=StateStore(tmp_path, "redis://h/0"))
    assert third.findings.active() == [], "the cleared finding was saved as cleared"
    # reported again after a restart: same first_seen, and the count goes on from the
    # saved one (as increase() of the violations counter does across its reset)
    fourth_dir = tmp_path / "again"
    first = Engine(settings, broker_url="redis://h/0", rule_classes=[Flaky],
                   store=StateStore(fourth_dir, "redis://h/0"))
    first.evaluate(now=1000.0)
    Flaky.fresh = 2
    again = Engine(settings, broker_url="redis://h/0", rule_classes=[Flaky],
                   store=StateStore(fourth_dir, "redis://h/0"))
    again.evaluate(now=1100.0)
    assert [(f.first_seen, f.count, f.last_seen) for f in again.findings.active()] == [
        (1000.0, 5, 1100.0)]


@pytest.mark.slow
@pytest.mark.redis
def test_flower_plugin_kill9_and_restart_brings_back_findings(redis_url: str,
                                                              tmp_path: Path) -> None:
    """``celery flower-practices --practices_state_dir=DIR``: a queue nobody consumes is
    found, Flower is killed with SIGKILL and started again; the finding is back with the
    same first_seen and confirmed again by the rule."""
    from tests.test_flower_plugin_integration import FlowerProcess

    config = tmp_path / "practices.toml"
    config.write_text(CONFIG)
    state_dir = tmp_path / "flower-state"
    args = ["flower-practices", f"--practices_config={config}",
            f"--practices_state_dir={state_dir}"]
    producer = make_producer(redis_url)
    key = ("queue_without_consumer", "orphan", None, None)

    def findings(flower: FlowerProcess) -> dict[tuple, dict] | None:
        status, body = flower.get("/api/practices")
        if status != 200:
            return None
        return {(f["practice"], f["queue"], f["task"], f["worker"]): f
                for f in json.loads(body)["findings"]}

    flower = FlowerProcess(redis_url, args, tmp_path)
    try:
        # events are pub/sub: send once Flower's receiver is subscribed (its /metrics
        # counts events only after that); the orphan queue is then probed
        wait_for(lambda: "flower_practices_event_stream_connected 1.0"
                 in flower.get("/metrics")[1], timeout=40,
                 message=f"Flower's event stream\n{flower.output()}")
        producer.send_task("bad.compute", args=(1,), queue="orphan")
        before = wait_for(lambda: (findings(flower) or {}).get(key), timeout=60,
                          message=f"queue_without_consumer in Flower\n{flower.output()}")
        wait_for(lambda: "queue_without_consumer" in saved_practices(
            state_dir / state_file_name(redis_url)), timeout=15,
            message="the finding in Flower's state file")
        flower.proc.send_signal(signal.SIGKILL)
        flower.proc.wait(10)
        restarted = time.time()
        flower = FlowerProcess(redis_url, args, tmp_path)
        after = findings(flower)
        assert after is not None and key in after, flower.output()
        assert after[key]["first_seen"] == before["first_seen"]
        confirmed = wait_for(lambda: (lambda f: f if f["last_seen"] > restarted else None)(
            (findings(flower) or {}).get(key) or {"last_seen": 0}), timeout=30,
            message="the finding confirmed after the restart")
        assert confirmed["first_seen"] == before["first_seen"]
    finally:
        flower.stop()


def test_restored_finding_holds_for_the_rules_window_or_until_refuted(tmp_path: Path) -> None:
    """A finding last seen just before the restart is kept for what is left of its rule's
    window (the rule lost that evidence), plus clear_after; a rule whose fresh data
    positively refutes it drops it at the first evaluation."""
    from flower_practices.config import Settings
    from flower_practices.engine import Engine
    from flower_practices.rules.base import Rule

    class Windowed(Rule):
        id = "retry_storm"
        defaults = {"window_seconds": 600.0}
        refute = False

        def evaluate(self, now):
            return ()

        def refutes(self, finding, now):
            return Windowed.refute

    now = time.time()
    item = {"practice": "retry_storm", "queue": "q", "task": "t", "worker": None,
            "severity": "warning", "summary": "s", "evidence": {}, "first_seen": now - 100,
            "last_seen": now - 10, "count": 4}
    StateStore(tmp_path, "redis://h/0").save(Snapshot(findings=[item], saved_at=now - 10))
    settings = Settings(clear_after_seconds=120.0)
    engine = Engine(settings, broker_url="redis://h/0", rule_classes=[Windowed],
                    store=StateStore(tmp_path, "redis://h/0"))
    (finding,) = engine.findings.active()
    assert finding.restored_until == pytest.approx(now - 10 + 600)
    engine.evaluate(now=now + 500)
    assert len(engine.findings.active()) == 1, "within the rule's window"
    engine.evaluate(now=now - 10 + 600 + 121)
    assert engine.findings.active() == []

    Windowed.refute = True
    engine = Engine(settings, broker_url="redis://h/0", rule_classes=[Windowed],
                    store=StateStore(tmp_path / "other", "redis://h/0"))
    assert engine.findings.active() == []  # other directory: nothing saved there
    engine.restore_state(Snapshot(findings=[item]), now=now)
    assert len(engine.findings.active()) == 1
    engine.evaluate(now=now + 1)
    assert engine.findings.active() == [], "refuted by fresh data"
