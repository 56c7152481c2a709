"""Settings loading: defaults, overrides and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from flower_practices.config import (
    ConfigError,
    Settings,
    load_settings,
    resolve_practice_options,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fp.toml"
    path.write_text(text)
    return path


def test_defaults_without_file() -> None:
    settings = load_settings(None)
    assert settings == Settings()
    assert settings.evaluation_interval == 5.0
    assert settings.max_task_names == 500


def test_overrides_are_applied(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, """
[exporter]
evaluation_interval = 2
max_queues = 50

[practices.queue_starvation]
max_wait_seconds = 30
severity = "critical"
"""))
    assert settings.evaluation_interval == 2
    assert settings.max_queues == 50
    assert settings.practice_options("queue_starvation") == {
        "max_wait_seconds": 30, "severity": "critical"}


@pytest.mark.parametrize(("text", "needle"), [
    ("[exporter]\nnope = 1\n", "unknown key 'nope'"),
    ("[exporter]\nevaluation_interval = 'fast'\n",
     "[exporter] evaluation_interval: expected a number, got a string 'fast'"),
    ("[exporter]\nenable_events = 1\n",
     "[exporter] enable_events: expected a boolean (true or false), got an integer 1"),
    ("exporter = 5\n", "exporter must be a table ([exporter]), got an integer 5"),
    ("practices = 5\n", "practices must be tables ([practices.<id>]), got an integer 5"),
    ("practices = [1, 2]\n", "practices must be tables"),
    ("[practices]\nlost_task = 5\n", "practices.lost_task must be a table"),
    ("[practices.lost_task]\nenabled = 'yes'\n",
     "[practices.lost_task] enabled: expected a boolean (true or false), got a string"),
    ("[practices.retryless_failure]\nextra_transient_exceptions = 'OSError'\n",
     "[practices.retryless_failure] extra_transient_exceptions: expected a list, "
     "got a string 'OSError'"),
    ("[practices.retryless_failure]\nextra_transient_exceptions = ['a', 1]\n",
     "extra_transient_exceptions: expected a list of strings, found an integer 1"),
    ("[exporter]\nrunbook_base_url = 5\n", "[exporter] runbook_base_url: expected a string"),
    ("[exporter]\nevent_consumer = 'fast'\n", "event_consumer must be"),
    ("[practices.not_a_practice]\nx = 1\n", "is not a practice id"),
    ("[practices.lost_task]\nseverity = 'panic'\n", "severity must be one of"),
    ("[surprise]\n", "unknown section"),
    ("this is = = not toml", "not valid TOML"),
])
def test_bad_files_give_clear_errors(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert needle in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml")


def test_practice_options_merge_and_validate() -> None:
    defaults = {"grace_seconds": 60, "names": ["a"]}
    merged = resolve_practice_options("x", defaults, {"grace_seconds": 5, "enabled": False})
    assert merged == {"grace_seconds": 5, "names": ["a"], "enabled": False}
    with pytest.raises(ConfigError, match="unknown key 'grace'"):
        resolve_practice_options("x", defaults, {"grace": 5})
    with pytest.raises(ConfigError, match="expected"):
        resolve_practice_options("x", defaults, {"names": "a"})


@pytest.mark.parametrize(("text", "needle"), [
    ("[exporter]\nevaluation_interval = 0\n",
     "[exporter] evaluation_interval: must be from 0.1 to 3600 seconds, got 0"),
    ("[exporter]\nevaluation_interval = 1e-9\n", "evaluation_interval: must be from 0.1"),
    ("[exporter]\nevaluation_interval = 1e9\n", "evaluation_interval: must be from 0.1"),
    ("[exporter]\nevaluation_interval = nan\n", "evaluation_interval: must be a finite"),
    ("[exporter]\nprobe_interval = 0.5\n",
     "[exporter] probe_interval: must be from 1 to 3600 seconds, got 0.5"),
    ("[exporter]\nclear_after_seconds = inf\n", "clear_after_seconds: must be a finite"),
    ("[exporter]\nclear_after_seconds = 1e12\n", "clear_after_seconds: must be at most"),
    ("[exporter]\nmax_tracked_tasks = 10000000000\n",
     "max_tracked_tasks: must be an integer from 1 to 100000000"),
    ("[practices.queue_starvation]\nmax_wait_seconds = -inf\n", "must be a finite"),
    ("[practices.queue_starvation]\npercentile = nan\n", "must be a finite"),
    ("[practices.lost_task]\nclear_after_seconds = nan\n", "must be a finite"),
    ("[exporter]\nrunbook_base_url = 'javascript:alert(1)'\n",
     "runbook_base_url: must be an http(s):// URL or a path starting with '/', "
     "got scheme 'javascript'"),
    ("[exporter]\nrunbook_base_url = 'data:text/html,x'\n", "got scheme 'data'"),
    ("[exporter]\nrunbook_base_url = '//evil.example/x'\n", "must be an http(s):// URL"),
    ("[exporter]\nrunbook_base_url = 'runbooks'\n", "must be an http(s):// URL"),
    ('[exporter]\nrunbook_base_url = "https://x/\\u0007"\n', "without control characters"),
    ("[exporter]\nmax_series_per_metric = 0\n", "max_series_per_metric: must be an integer"),
    ("[practices.retry_storm]\nwindow_seconds = 0\n",
     "[practices.retry_storm] window_seconds: must be > 0"),
    ("[practices.unread_results]\nsample_every = 0\n",
     "[practices.unread_results] sample_every: must be an integer from 1 to"),
    ("[practices.unread_results]\nmin_share = 2.0\n", "min_share: must be in (0, 1]"),
    ("[practices.queue_starvation]\npercentile = 0\n", "percentile: must be in (0, 100]"),
    ("[practices.lost_task]\ngrace_seconds = -1\n", "grace_seconds: must be >= 0"),
    ("[practices.lost_task]\nnope = 1\n", "unknown key 'nope'"),
])
def test_out_of_range_values_in_a_file_name_the_file_and_key(tmp_path: Path, text: str,
                                                             needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert needle in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_bounds_and_safe_urls_are_accepted(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, """
[exporter]
evaluation_interval = 0.1
probe_interval = 1
runbook_base_url = "https://wiki.example.com/runbooks/"
"""))
    assert (settings.evaluation_interval, settings.probe_interval) == (0.1, 1)
    for url in ("http://wiki/x", "/runbooks", ""):
        text = f'[exporter]\nrunbook_base_url = "{url}"\n'
        assert load_settings(write(tmp_path, text)).runbook_base_url == url


def test_zero_is_accepted_where_it_means_none(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, """
[practices.lost_task]
grace_seconds = 0
clear_after_seconds = 0

[practices.events_disabled]
warmup_seconds = 0
"""))
    assert settings.practice_options("lost_task") == {"grace_seconds": 0,
                                                      "clear_after_seconds": 0}
