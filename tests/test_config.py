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
