"""The Flower plugin in-process: auth (basic, OAuth), url_prefix, navbar tab, event tap,
metrics registration, runbook placeholders, plugin option parsing and errors (stock
``celery flower --plugins`` included). Real Flower app, real handlers."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import types

import pytest
import tornado.web
from celery import Celery
from flower.urls import settings as flower_settings
from flower.utils import prepend_url
from prometheus_client import REGISTRY, generate_latest
from tornado.options import OptionParser
from tornado.options import options as tornado_options
from tornado.testing import AsyncHTTPTestCase

from flower_practices.config import Settings
from flower_practices.flower_plugin import plugin as plugin_module
from flower_practices.flower_plugin.host import (
    DEFAULT_PLUGINS,
    PluginError,
    PluginFlower,
    define_options,
    enable,
    requested_plugins,
    resolve_all,
)
from flower_practices.flower_plugin.web import inject_nav_item, render_markdown
from tests.support.worker import ROOT

enable()

COOKIE_SECRET = "test-cookie-secret"


def charge() -> None:
    return None


def make_capp() -> Celery:
    capp = Celery("fp_flower_test", broker="memory://", set_as_current=False)
    capp.conf.task_default_queue = "celery"
    capp.task(name="shop.charge")(charge)
    return capp


def make_options(**overrides) -> types.SimpleNamespace:
    values = tornado_options.as_dict()
    values.update(overrides)
    return types.SimpleNamespace(**values)


def make_settings(url_prefix: str | None = None, oauth: bool = False) -> dict:
    settings = dict(flower_settings)
    settings["cookie_secret"] = COOKIE_SECRET
    if url_prefix:
        for name in ("login_url", "static_url_prefix"):
            settings[name] = prepend_url(settings[name], url_prefix)
    if oauth:
        settings["oauth"] = {"key": "k", "secret": "s", "redirect_uri": "http://x/login"}
    return settings


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def feed_failure(app: PluginFlower, uuid: str = "00000000-0000-0000-0000-000000000001") -> None:
    """A task that fails with a transient error and never retried, through Flower's state."""
    now = time.time()
    base = {"uuid": uuid, "hostname": "w1@host", "local_received": now, "clock": 1}
    app.events.state.event({**base, "type": "task-sent", "name": "shop.charge",
                            "queue": "celery", "routing_key": "celery", "timestamp": now,
                            "args": "()", "kwargs": "{}"})
    app.events.state.event({**base, "type": "task-received", "name": "shop.charge",
                            "timestamp": now, "args": "()", "kwargs": "{}"})
    app.events.state.event({**base, "type": "task-started", "timestamp": now})
    app.events.state.event({**base, "type": "task-failed", "timestamp": now + 0.1,
                            "exception": "ConnectionError('secret-host:6379 refused')",
                            "traceback": "Traceback..."})
    plugin_module.flush_tap(app.events)  # the tap feeds the engine in batches
    app.flower_practices.engine.evaluate()


def initial(body: str) -> dict:
    """The findings document the page ships for its script to render."""
    start = body.index('<script type="application/json" id="fp-initial">')
    start = body.index(">", start) + 1
    return json.loads(body[start:body.index("</script>", start)])


class _PluginCase(AsyncHTTPTestCase):
    url_prefix: str | None = None
    oauth = False
    basic_auth: list[str] | None = None

    def get_app(self) -> tornado.web.Application:
        opts = make_options(basic_auth=self.basic_auth or [], url_prefix=self.url_prefix,
                            auth=".*@example.com" if self.oauth else "", enable_events=False)
        self.flower = PluginFlower(capp=make_capp(), options=opts, io_loop=self.io_loop,
                                   plugins=["flower_practices"],
                                   **make_settings(self.url_prefix, self.oauth))
        return self.flower

    def tearDown(self) -> None:
        self.flower.plugins["flower_practices"].stop()
        self.flower.executor.shutdown(wait=False)
        super().tearDown()


class TestBasicAuth(_PluginCase):
    basic_auth = ["admin:s3cret"]

    def test_missing_and_wrong_credentials_get_401(self):
        for path in ("/practices", "/api/practices", "/practices/runbooks/retry_storm"):
            response = self.fetch(path)
            assert response.code == 401, path
            if not path.startswith("/api/"):  # Flower's API handlers send no challenge
                assert response.headers["WWW-Authenticate"].startswith("Basic")
            response = self.fetch(path, headers=basic("admin", "wrong"))
            assert response.code == 401, path

    def test_authorised_page_lists_findings_by_severity_with_evidence(self):
        feed_failure(self.flower)
        response = self.fetch("/practices", headers=basic("admin", "s3cret"))
        assert response.code == 200
        body = response.body.decode()
        doc = initial(body)
        [finding] = [f for f in doc["findings"] if f["practice"] == "retryless_failure"]
        assert finding["evidence"]["exception_classes"] == {"ConnectionError": 1}
        assert "secret-host" not in body  # exception messages never shown
        assert 'aria-current="page">Practices</a>' in body  # our tab, active
        assert "/static/css/bootstrap.min.css" in body  # Flower's base template
        assert "practices-coverage" in body and 'id="fp-filter"' in body
        assert "innerHTML" not in body  # wire data only ever goes through textContent

    def test_page_data_cannot_close_its_script_element(self):
        feed_failure(self.flower)
        engine = self.flower.flower_practices.engine
        with engine.lock:
            for f in engine.findings.sorted():
                f.summary = "</script><script>alert(1)</script>"
        body = self.fetch("/practices", headers=basic("admin", "s3cret")).body.decode()
        assert "<script>alert(1)" not in body
        assert initial(body)["findings"][0]["summary"] == "</script><script>alert(1)</script>"

    def test_api_document_is_built_once_per_cache_interval(self):
        """Many requests (open pages, a client in a loop) cost one build per
        ``metrics_cache_seconds``, as on the exporter; a new interval shows new data."""
        plugin = self.flower.plugins["flower_practices"]
        clock = [1000.0]
        plugin.settings.metrics_cache_seconds = 1.0
        plugin.clock = lambda: clock[0]
        bodies = {self.fetch("/api/practices", headers=basic("admin", "s3cret")).body
                  for _ in range(20)}
        assert len(bodies) == 1 and plugin.api_builds == 1
        assert not [f for f in json.loads(bodies.pop())["findings"]
                    if f["practice"] == "retryless_failure"]
        feed_failure(self.flower)
        clock[0] += 1.5  # the next interval
        body = self.fetch("/api/practices", headers=basic("admin", "s3cret")).body
        assert plugin.api_builds == 2
        assert [f for f in json.loads(body)["findings"]
                if f["practice"] == "retryless_failure"]

    def test_api_returns_the_contract_document(self):
        feed_failure(self.flower)
        response = self.fetch("/api/practices", headers=basic("admin", "s3cret"))
        assert response.code == 200
        payload = json.loads(response.body)
        assert set(payload) == {"findings", "practices", "coverage", "stream"}
        assert payload["stream"]["connected"] is False
        assert payload["stream"]["disconnected_since"] > 0
        finding = next(f for f in payload["findings"] if f["practice"] == "retryless_failure")
        assert finding["task"] == "shop.charge" and finding["queue"] == "celery"
        assert finding["severity"] == "warning"

    def test_flower_pages_get_the_practices_tab(self):
        response = self.fetch("/tasks", headers=basic("admin", "s3cret"))
        assert response.code == 200
        body = response.body.decode()
        assert 'href="/practices"' in body and ">Practices</a>" in body
        assert 'aria-current="page">Practices</a>' not in body  # not the active tab here

    def test_runbook_page_renders_markdown_and_404s_unknown_ids(self):
        auth = basic("admin", "s3cret")
        response = self.fetch("/practices/runbooks/retry_storm", headers=auth)
        assert response.code == 200
        assert b"<h" in response.body and b"retry_storm" in response.body
        assert self.fetch("/practices/runbooks/no_such_practice", headers=auth).code == 404
        assert self.fetch("/practices/runbooks/..%2Fengine", headers=auth).code == 404

    def test_runbook_fills_in_the_findings_queue_escaped(self):
        auth = basic("admin", "s3cret")
        plain = self.fetch("/practices/runbooks/queue_without_consumer", headers=auth)
        assert b"&lt;queue&gt;" in plain.body  # placeholders stay without a finding
        filled = self.fetch("/practices/runbooks/queue_without_consumer?queue=%3Cb%3Epay",
                            headers=auth).body.decode()
        assert "&lt;queue&gt;" not in filled and "-Q &lt;b&gt;pay" in filled
        assert "<b>pay" not in filled

    def test_metrics_next_to_flowers_own(self):
        feed_failure(self.flower)
        text = self.fetch("/metrics").body.decode()
        assert 'celery_practice_violation{practice="retryless_failure"' in text
        assert "flower_events_total" in text  # Flower's own metrics are still there
        assert 'celery_task_events_total{queue="celery",task="shop.charge",type="failed"} 1.0' \
            in text


class TestOAuth(_PluginCase):
    oauth = True

    def test_unauthenticated_is_redirected_to_login(self):
        response = self.fetch("/practices", follow_redirects=False)
        assert response.code == 302
        assert response.headers["Location"].startswith("/login?next=%2Fpractices")

    def test_logged_in_user_sees_the_page(self):
        cookie = tornado.web.create_signed_value(COOKIE_SECRET, "user", "ops@example.com")
        headers = {"Cookie": f"user={cookie.decode()}"}
        response = self.fetch("/practices", headers=headers)
        assert response.code == 200
        assert b"practices-coverage" in response.body
        other = tornado.web.create_signed_value(COOKIE_SECRET, "user", "eve@evil.test")
        response = self.fetch("/practices", headers={"Cookie": f"user={other.decode()}"},
                              follow_redirects=False)
        assert response.code == 302

    def test_api_uses_the_browser_session(self):
        assert self.fetch("/api/practices", follow_redirects=False).code == 401  # no redirect
        cookie = tornado.web.create_signed_value(COOKIE_SECRET, "user", "ops@example.com")
        response = self.fetch("/api/practices", headers={"Cookie": f"user={cookie.decode()}"})
        assert response.code == 200 and "coverage" in json.loads(response.body)


class TestUrlPrefix(_PluginCase):
    url_prefix = "flower"
    basic_auth = ["admin:s3cret"]

    def test_pages_live_under_the_prefix(self):
        auth = basic("admin", "s3cret")
        response = self.fetch("/flower/practices", headers=auth)
        assert response.code == 200
        body = response.body.decode()
        assert 'href="/flower/practices"' in body
        assert 'href="/flower/api/practices"' in body
        config = json.loads(body.split('id="fp-config">', 1)[1].split("</script>", 1)[0])
        assert config["api"] == "/flower/api/practices"
        assert config["links"] == {"worker": "/flower/worker/", "task": "/flower/task/",
                                   "tasks": "/flower/tasks", "broker": "/flower/broker",
                                   "runbook": "/flower/practices/runbooks/"}
        assert "/flower/static/css/bootstrap.min.css" in body
        assert self.fetch("/flower/api/practices", headers=auth).code == 200
        assert self.fetch("/practices", headers=auth).code == 404
        assert self.fetch("/flower/practices").code == 401

    def test_prefixed_oauth_login_redirect(self):
        self.flower.options.auth = ".*@example.com"
        self.flower.options.basic_auth = []
        response = self.fetch("/flower/practices", follow_redirects=False)
        assert response.code == 302
        assert response.headers["Location"].startswith("/flower/login")


class TestHealth(_PluginCase):
    def test_healthz_follows_the_event_connection(self):
        status = self.flower.flower_practices.status
        assert self.fetch("/healthz").code == 503
        status.mark_connected()
        response = self.fetch("/healthz")
        assert response.code == 200 and json.loads(response.body)["status"] == "ok"
        status.mark_disconnected("event capture failed: ConnectionError")
        assert b"ConnectionError" in self.fetch("/healthz").body

    def test_api_follows_the_pages_auth(self):
        # the page's data: open when the page is (no auth set), no FLOWER_UNAUTHENTICATED_API
        assert self.fetch("/practices").code == 200
        response = self.fetch("/api/practices")
        assert response.code == 200 and "findings" in json.loads(response.body)
        since = json.loads(self.fetch("/healthz").body)["since"]
        assert since > 0  # down since start-up


class TestEventTap(_PluginCase):
    def test_events_reach_flower_and_the_engine(self):
        feed_failure(self.flower)
        state = self.flower.events.state
        assert state.counter["w1@host"]["task-failed"] == 1  # Flower's own handling ran
        engine = self.flower.flower_practices.engine
        assert engine.stream_status.events == 4
        assert engine.metrics.task_events[("failed", "shop.charge", "celery")] == 1

    def test_engine_sees_an_event_even_when_flower_rejects_it(self):
        engine = self.flower.flower_practices.engine
        with pytest.raises(KeyError):
            self.flower.events.state.event({"type": "worker-heartbeat"})  # no hostname
        assert engine.stream_status.events == 0  # held for the tap's next batch
        plugin_module.flush_tap(self.flower.events)
        assert engine.stream_status.events == 1

    def test_install_twice_registers_the_collector_once(self):
        second = plugin_module.install(self.flower, Settings())
        collectors = [c for c in list(REGISTRY._collector_to_names)
                      if type(c).__name__ == "PracticesCollector"]
        assert len(collectors) == 1
        assert collectors[0].engine is second.engine
        text = generate_latest().decode()
        assert text.count("# TYPE celery_practice_violation gauge") == 1


def test_navbar_injection_adds_one_guarded_tab():
    navbar = '<ul class="app-nav navbar-nav"><li>Broker</li></ul><ul class="x"></ul>'
    patched = inject_nav_item(navbar)
    assert patched.count("reverse_url('practices')") == 1
    assert patched.index("reverse_url('practices')") < patched.index("</ul>")
    assert inject_nav_item(patched) == patched


def test_plugin_names_from_options_and_unknown_names():
    assert requested_plugins(types.SimpleNamespace(plugins=[])) == []
    assert requested_plugins(types.SimpleNamespace(plugins=[]), DEFAULT_PLUGINS) == \
        ["flower_practices"]
    assert requested_plugins(types.SimpleNamespace(plugins=["a,b", " a", ""])) == ["a", "b"]
    with pytest.raises(PluginError, match="unknown Flower plugin 'nope'.*flower_practices"):
        resolve_all(["flower_practices", "nope"])


def test_flowerconfig_accepts_list_or_string(tmp_path):
    parser = OptionParser()
    parser.define("plugins", type=str, multiple=True, default=[])
    for text, expected in (('plugins = ["flower_practices"]', ["flower_practices"]),
                           ('plugins = "flower_practices,x"', ["flower_practices", "x"])):
        conf = tmp_path / "flowerconfig.py"
        conf.write_text(text)
        parser.parse_config_file(str(conf))
        assert requested_plugins(parser) == expected


def test_stock_flower_without_plugins_is_unchanged():
    opts = make_options(plugins=[], enable_events=False)
    app = PluginFlower(capp=make_capp(), options=opts, **make_settings())
    try:
        assert app.plugins == {} and not hasattr(app, "flower_practices")
    finally:
        app.executor.shutdown(wait=False)


def test_global_options_define_is_idempotent():
    define_options()
    define_options()
    assert "plugins" in tornado_options and "practices_config" in tornado_options


def test_runbook_markdown_is_escaped():
    html = render_markdown("# Title\n\n<script>x</script> `code` [a](javascript:x)\n\n- item")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<h2>Title</h2>" in html and "<code>code</code>" in html
    assert "javascript:" not in html and "<li>item</li>" in html


def _run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, "-m", "celery", "-b", "memory://", *args],
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                          env={**os.environ, **(env or {})})


def test_cli_unknown_plugin_is_an_error_not_silence():
    result = _run_cli("flower-practices", "--plugins=flower_practices,nope", "--port=0")
    assert result.returncode != 0
    assert "unknown Flower plugin 'nope'" in result.stderr


def test_cli_unknown_plugin_from_environment(tmp_path):
    result = _run_cli("flower-practices", "--port=0", env={"FLOWER_PLUGINS": "typo"})
    assert result.returncode != 0
    assert "unknown Flower plugin 'typo'" in result.stderr


@pytest.mark.parametrize("form", ["celery", "python -m flower", "env", "flowerconfig"])
def test_stock_flower_unknown_plugin_is_an_error(form, tmp_path):
    import os
    if form == "python -m flower":
        cmd = [sys.executable, "-m", "flower", "-b", "memory://", "flower", "--plugins=nope"]
    else:
        cmd = [sys.executable, "-m", "celery", "-b", "memory://", "flower"]
        cmd += ["--plugins=nope"] if form == "celery" else []
    (tmp_path / "flowerconfig.py").write_text('plugins = ["nope"]\n' if form == "flowerconfig"
                                              else "")
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath,
           **({"FLOWER_PLUGINS": "nope"} if form == "env" else {})}
    result = subprocess.run([*cmd, "--port=0"], capture_output=True, text=True, timeout=60,
                            cwd=str(tmp_path), env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "unknown Flower plugin 'nope'; known plugins: flower_practices" in result.stderr



def test_cli_bad_practices_config_is_an_error(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("[exporter]\nno_such_key = 1\n")
    result = _run_cli("flower-practices", f"--practices_config={bad}", "--port=0")
    assert result.returncode != 0
    assert "no_such_key" in result.stderr


def test_cli_broker_url_that_can_never_work_exits_2():
    import os
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-b", "redis://127.0.0.1:99999/0", "flower-practices",
         "--port=0"], capture_output=True, text=True, timeout=60, cwd=str(ROOT),
        env=dict(os.environ))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "port" in lines[0].lower() and "out of range" in lines[0]


@pytest.mark.parametrize(("text", "needle"), [
    ("exporter = 5\n", "exporter must be a table"),
    ("[exporter]\nevaluation_interval = 1e-9\n", "[exporter] evaluation_interval: must be"),
    ("[exporter]\nrunbook_base_url = 'javascript:alert(1)'\n", "runbook_base_url: must be"),
])
def test_cli_practices_config_errors_are_one_line_and_exit_2(tmp_path, text, needle):
    bad = tmp_path / "p.toml"
    bad.write_text(text)
    result = _run_cli("flower-practices", f"--practices_config={bad}", "--port=0")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and str(bad) in lines[0], result.stderr
