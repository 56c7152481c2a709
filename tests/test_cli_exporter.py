"""The real ``flower-practices exporter`` console script, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.exporter import free_port, wait_for

CLI = [sys.executable, "-m", "flower_practices"]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=60, **kwargs)


def test_help_lists_the_contract_options() -> None:
    out = run(["exporter", "--help"])
    assert out.returncode == 0
    for option in ("--broker", "-A, --app", "--result-backend", "--config", "--host", "--port"):
        assert option in out.stdout


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[practices.no_such_practice]\nx = 1\n")
    out = run(["exporter", "--broker", "memory://", "--config", str(bad)])
    assert out.returncode == 2
    assert "no_such_practice" in out.stderr and "is not a practice id" in out.stderr
    assert "Traceback" not in out.stderr


def one_line_error(out: subprocess.CompletedProcess) -> str:
    """The single stderr line of a usage/config failure (exit 2, no traceback)."""
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    return lines[0]


@pytest.mark.parametrize(("text", "needle"), [
    ("exporter = 5\n", "exporter must be a table"),
    ("practices = 5\n", "practices must be tables"),
    ("[exporter]\nevaluation_interval = 1e-9\n", "[exporter] evaluation_interval: must be"),
    ("[exporter]\nprobe_interval = inf\n", "[exporter] probe_interval: must be a finite"),
    ("[exporter]\nrunbook_base_url = 'javascript:alert(1)'\n", "runbook_base_url: must be"),
    ("[practices.unread_results]\nignore_tasks = 'a.b'\n",
     "[practices.unread_results] ignore_tasks: expected a list, got a string"),
])
def test_config_errors_are_one_line_and_exit_2(tmp_path: Path, text: str, needle: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    line = one_line_error(run(["exporter", "--broker", "memory://", "--config", str(bad)]))
    assert needle in line and str(bad) in line


@pytest.mark.parametrize(("url", "needle"), [
    ("nosuch://localhost//", "unknown scheme 'nosuch'"),
    ("redis://127.0.0.1:99999/0", "out of range"),
    ("amqp://guest:s3cret@127.0.0.1:99999//", "out of range"),
    ("redis://127.0.0.1:6379/notanumber", "Redis database 'notanumber' is not a number"),
    ("redis://127.0.0.1:port/0", "could not be cast to integer"),
])
def test_broker_url_that_can_never_work_exits_2_at_start(url: str, needle: str) -> None:
    line = one_line_error(run(["exporter", "--broker", url, "--port", str(free_port())]))
    assert needle in line
    assert "s3cret" not in line  # credentials are redacted


def test_unloadable_app_is_a_clear_error() -> None:
    out = run(["exporter", "-A", "no_such_module_xyz"])
    assert out.returncode == 2
    assert "cannot load Celery app 'no_such_module_xyz'" in out.stderr
    assert "Traceback" not in out.stderr


def serving(redis_url: str) -> tuple[subprocess.Popen, int]:
    """The console script's exporter on a free port, once /healthz answers 200 (the
    caller stops it; output on ``proc.stdout``)."""
    port = free_port()
    proc = subprocess.Popen(CLI + ["exporter", "--broker", redis_url, "--host", "127.0.0.1",
                                   "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, timeout=30, message="exporter /healthz 200")
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc, port


def test_serves_and_stops_cleanly_on_sigterm(redis_url: str) -> None:
    proc, port = serving(redis_url)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert "flower_practices_event_stream_connected 1.0" in text
        assert "process_resident_memory_bytes" in text
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, output
        assert "Traceback" not in output
        assert "stopping exporter" in output
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sighup_stops_cleanly(redis_url: str) -> None:
    """Documented choice: SIGHUP stops like SIGTERM (exit 0); no reload."""
    proc, _ = serving(redis_url)
    try:
        proc.send_signal(signal.SIGHUP)
        output, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, output
        assert "received SIGHUP: stopping" in output and "stopping exporter" in output
        assert "Traceback" not in output
    finally:
        if proc.poll() is None:
            proc.kill()


def test_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = run(["exporter", "--broker", "memory://", "--host", "127.0.0.1",
                   "--port", str(port)])
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr


@pytest.mark.parametrize("url", ["sqla+postgresql://127.0.0.1/test"])
def test_database_broker_keeps_serving_with_503(url: str) -> None:
    port = free_port()
    proc = subprocess.Popen(CLI + ["exporter", "--broker", url, "--host", "127.0.0.1",
                                   "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def status() -> tuple[int, str] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
            except OSError:
                return None

        code, body = wait_for(status, timeout=30, message="exporter answering")
        assert code == 503
        assert "database" in body

        def broker_finding() -> dict | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/practices",
                                        timeout=2) as r:
                doc = json.loads(r.read())
            found = [f for f in doc["findings"] if f["practice"] == "database_broker"]
            return found[0] if found else None

        f = wait_for(broker_finding, timeout=30, message="database_broker finding")
        assert f["evidence"]["source"] == "exporter --broker option"
        assert f["count"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0
