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
    ("[exporter]\nevaluation_interval = 'fast'\n", "expected number"),
    ("[exporter]\nenable_events = 1\n", "expected bool"),
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
    ("[exporter]\nevaluation_interval = 0\n", "[exporter] evaluation_interval: must be > 0"),
    ("[exporter]\nmax_series_per_metric = 0\n", "max_series_per_metric: must be an integer"),
    ("[practices.retry_storm]\nwindow_seconds = 0\n",
     "[practices.retry_storm] window_seconds: must be > 0"),
    ("[practices.unread_results]\nsample_every = 0\n",
     "[practices.unread_results] sample_every: must be an integer >= 1"),
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
