"""Settings: documented defaults, overridden by the TOML file given with ``--config``.

Layout of the file::

    [exporter]                    # engine-wide settings (all optional)
    evaluation_interval = 5
    clear_after_seconds = 120

    [practices.queue_starvation]  # one section per practice id (all optional)
    enabled = true
    severity = "warning"
    max_wait_seconds = 60

Unknown sections or keys are an error that names them, not silence. Every value is
checked for its type and its range (see :func:`_check_range` and :data:`EXPORTER_BOUNDS`),
and every error is one line naming the file, the section and the key.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .catalogue import BY_ID, SEVERITIES
from .ignores import IGNORE_KEY, pattern_problem

#: default of ``[exporter] max_series_per_metric`` (also BaseMetrics' default)
DEFAULT_MAX_SERIES_PER_METRIC = 10_000
#: default of ``[exporter] max_exception_classes`` (also BaseMetrics' default)
DEFAULT_MAX_EXCEPTION_CLASSES = 50


class ConfigError(ValueError):
    """The configuration file or an option is invalid; the message says what and where."""


@dataclass(slots=True)
class Settings:
    """Engine-wide settings. Every field can be set in the ``[exporter]`` section."""

    #: seconds between rule evaluations (off the event hot path); 0.1 to 3600
    evaluation_interval: float = 5.0
    #: seconds between broker probes (queue lengths, consumers, active_queues); 1 to 3600
    probe_interval: float = 15.0
    #: a finding clears after its condition has been false this long
    clear_after_seconds: float = 120.0
    #: base URL the runbook links point to: an http(s):// URL or a path starting with "/"
    runbook_base_url: str = ""
    #: in-flight task records kept (LRU); older ones are evicted and counted
    max_tracked_tasks: int = 100_000
    #: distinct task names used as label values; more become "__other__"
    max_task_names: int = 500
    #: distinct queue names used as label values; more become "__other__"
    max_queues: int = 200
    #: distinct worker hostnames tracked and used as label values
    max_workers: int = 1000
    #: series per (task, queue) metric family (task events, runtime histogram -- each of
    #: its label sets is 21 series: buckets, sum, count -- and violations_total); past it,
    #: new label sets fold into task and queue "__other__", counted in
    #: `flower_practices_label_overflow_total{label="series"}`
    max_series_per_metric: int = DEFAULT_MAX_SERIES_PER_METRIC
    #: distinct exception class names used as the `exception` label of
    #: `celery_task_failures_total`; more fold into "__other__", counted in
    #: `flower_practices_label_overflow_total{label="exception"}`
    max_exception_classes: int = DEFAULT_MAX_EXCEPTION_CLASSES
    #: ask workers to enable task events (off: we want to detect when they are off)
    enable_events: bool = False
    #: event ingestion: "auto" (direct Redis pub/sub when the broker is plain Redis, the
    #: direct AMQP consumer on amqp:// and pyamqp://, else Celery's receiver) or "kombu"
    #: (always Celery's generic receiver)
    event_consumer: str = "auto"
    #: standalone exporter: `/metrics` is rendered at most once per this many seconds per
    #: format, and `/api/practices` built at most once, off the event loop; concurrent
    #: requests share one rendering (0: render for every request that does not find one
    #: in flight). Flower plugin: `/api/practices` built at most once per this many
    #: seconds (on Flower's IOLoop; Flower renders its own `/metrics`)
    metrics_cache_seconds: float = 1.0
    #: standalone exporter: open HTTP connections served at once; at the cap the one that
    #: has waited longest for a request is closed for room, else a new one gets a 503
    max_connections: int = 2048
    #: standalone exporter: a connection is closed when a request's headers take longer
    #: than this, or when it stays idle between requests this long
    http_idle_timeout_seconds: float = 30.0
    #: per-practice overrides, ``{practice_id: {key: value}}``
    practices: dict[str, dict[str, Any]] = field(default_factory=dict)

    def practice_options(self, practice_id: str) -> dict[str, Any]:
        return self.practices.get(practice_id, {})


COMMON_PRACTICE_KEYS = {"enabled": bool, "severity": str, "clear_after_seconds": (int, float),
                        IGNORE_KEY: (list, tuple)}


_TYPE_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a number",
               str: "a string", list: "a list", tuple: "a list", dict: "a table"}


def _type_name(expected: Any) -> str:
    if expected == (int, float) or expected == (float, int):
        return "a number"
    if isinstance(expected, tuple):
        return " or ".join(dict.fromkeys(_TYPE_NAMES.get(t, t.__name__) for t in expected))
    return _TYPE_NAMES.get(expected, expected.__name__)


def _value_text(value: Any) -> str:
    """A short description of a (possibly huge or nested) configured value."""
    kind = "a boolean" if isinstance(value, bool) else _TYPE_NAMES.get(type(value),
                                                                      type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _check_type(where: str, value: Any, expected: Any) -> None:
    if isinstance(value, bool) and bool not in (
            expected if isinstance(expected, tuple) else (expected,)):
        raise ConfigError(f"{where}: expected {_type_name(expected)}, got a boolean {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{where}: expected {_type_name(expected)}, "
                          f"got {_value_text(value)}")


#: [exporter] keys with bounds of their own: (minimum, maximum), inclusive
EXPORTER_BOUNDS: dict[str, tuple[float, float]] = {
    "evaluation_interval": (0.1, 3600.0),
    "probe_interval": (1.0, 3600.0),
}
#: upper bound of every other duration (``*_seconds``, ``*_interval``): 31 days
MAX_SECONDS = 31 * 86400.0
#: upper bound of every count or cap
MAX_COUNT = 100_000_000
#: URL schemes a runbook link may use (else it must be a path starting with "/")
RUNBOOK_SCHEMES = ("http", "https")


def check_runbook_base_url(where: str, value: str) -> None:
    """An ``http(s)://host/...`` URL or an absolute path; nothing a browser would run."""
    if not value:
        return
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or len(value) > 2000:
        raise ConfigError(f"{where}: must be a URL without control characters "
                          "(at most 2000 characters)")
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme:
        if parts.scheme.lower() not in RUNBOOK_SCHEMES or not parts.netloc:
            raise ConfigError(f"{where}: must be an http(s):// URL or a path starting with "
                              f"'/', got scheme {parts.scheme!r}")
    elif not value.startswith("/") or value.startswith("//"):
        raise ConfigError(f"{where}: must be an http(s):// URL or a path starting with '/', "
                          f"got {_value_text(value)}")



#: ``*_seconds`` keys for which 0 is meaningful: a delay, tolerance or warm-up that may be
#: none (``clear_after_seconds = 0`` clears at once, ``zero_delay_seconds = 0`` turns the
#: zero-delay check off). Every other ``*_seconds`` / ``*_interval`` key is a window, a
#: period or a threshold and must be > 0 (a zero window divides by zero on the hot path).
ZERO_ALLOWED_SECONDS = frozenset({
    "clear_after_seconds", "grace_seconds", "offline_grace_seconds", "tolerance_seconds",
    "warmup_seconds", "zero_delay_seconds", "min_wait_seconds", "metrics_cache_seconds",
    "min_learning_seconds",
})


def _check_range(where: str, key: str, value: Any, default: Any) -> None:
    """Reject values the engine cannot run with; the rule per key kind is by its name.

    - integer keys (counts, caps, ``sample_every``, ``max_scan_chars``): an int >= 1 and
      <= :data:`MAX_COUNT`
    - keys in :data:`EXPORTER_BOUNDS` (``evaluation_interval`` >= 0.1 s, ``probe_interval``
      >= 1 s): within their bounds
    - ``percentile``: 0 < value <= 100
    - ``*share``: 0 < value <= 1
    - other numbers (``*_seconds``, ``*_interval``): finite, > 0 (or >= 0 for the keys
      in :data:`ZERO_ALLOWED_SECONDS`) and <= :data:`MAX_SECONDS`
    - lists (names): strings only
    """
    if isinstance(default, bool) or isinstance(value, bool):
        return
    if isinstance(default, (list, tuple)):
        _check_names(where, value)
    elif not isinstance(default, (int, float)) or not isinstance(value, (int, float)):
        return
    elif isinstance(default, int):
        _check_count(where, value)
    else:
        _check_number(where, key, value)


def _check_names(where: str, value: Any) -> None:
    bad = next((item for item in value if not isinstance(item, str)), None)
    if bad is not None:
        raise ConfigError(f"{where}: expected a list of strings, found {_value_text(bad)}")


def _check_count(where: str, value: int | float) -> None:
    if not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if not 1 <= value <= MAX_COUNT:
        raise ConfigError(f"{where}: must be an integer from 1 to {MAX_COUNT}, got {value!r}")


def _check_number(where: str, key: str, value: int | float) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if key in EXPORTER_BOUNDS:
        low, high = EXPORTER_BOUNDS[key]
        if not low <= value <= high:
            raise ConfigError(f"{where}: must be from {low:g} to {high:g} seconds, "
                              f"got {value!r}")
        return
    if key == "percentile":
        if not 0 < value <= 100:
            raise ConfigError(f"{where}: must be in (0, 100], got {value!r}")
        return
    if key.endswith("share"):
        if not 0 < value <= 1:
            raise ConfigError(f"{where}: must be in (0, 1], got {value!r}")
        return
    if value > MAX_SECONDS:
        raise ConfigError(f"{where}: must be at most {MAX_SECONDS:g}, got {value!r}")
    if key in ZERO_ALLOWED_SECONDS:
        if value < 0:
            raise ConfigError(f"{where}: must be >= 0, got {value!r}")
    elif value <= 0:
        raise ConfigError(f"{where}: must be > 0, got {value!r}")


def settings_from_mapping(data: dict[str, Any], source: str = "<config>") -> Settings:
    """Build :class:`Settings` from a parsed TOML mapping, validating every key."""
    settings = Settings()
    unknown_sections = set(data) - {"exporter", "practices"}
    if unknown_sections:
        raise ConfigError(
            f"{source}: unknown section(s) {sorted(unknown_sections)}; "
            "expected [exporter] and [practices.<id>]"
        )
    exporter = data.get("exporter", {})
    if not isinstance(exporter, dict):
        raise ConfigError(f"{source}: exporter must be a table ([exporter]), "
                          f"got {_value_text(exporter)}")
    known = {f.name: f for f in fields(Settings) if f.name != "practices"}
    for key, value in exporter.items():
        if key not in known:
            raise ConfigError(
                f"{source}: [exporter] has unknown key {key!r}; known: {sorted(known)}")
        default = getattr(settings, key)
        expected: Any = (int, float) if isinstance(default, (int, float)) and not isinstance(
            default, bool) else type(default)
        _check_type(f"{source}: [exporter] {key}", value, expected)
        _check_range(f"{source}: [exporter] {key}", key, value, default)
        setattr(settings, key, value)
    check_runbook_base_url(f"{source}: [exporter] runbook_base_url", settings.runbook_base_url)
    if settings.event_consumer not in ("auto", "kombu"):
        raise ConfigError(f"{source}: [exporter] event_consumer must be \"auto\" or "
                          f"\"kombu\", got {settings.event_consumer!r}")
    practices = data.get("practices", {})
    if not isinstance(practices, dict):
        raise ConfigError(f"{source}: practices must be tables ([practices.<id>]), "
                          f"got {_value_text(practices)}")
    for practice_id, options in practices.items():
        if practice_id not in BY_ID:
            raise ConfigError(
                f"{source}: [practices.{practice_id}] is not a practice id; known: {sorted(BY_ID)}"
            )
        if not isinstance(options, dict):
            raise ConfigError(f"{source}: practices.{practice_id} must be a table "
                              f"([practices.{practice_id}]), got {_value_text(options)}")
        severity = options.get("severity")
        if severity is not None and severity not in SEVERITIES:
            raise ConfigError(
                f"{source}: [practices.{practice_id}] severity must be one of {SEVERITIES}"
            )
        rule = _rule_defaults().get(practice_id)
        if rule is not None:  # keys, types and ranges, with the file's name in the error
            resolve_practice_options(practice_id, rule, options, source)
        settings.practices[practice_id] = dict(options)
    return settings


def _rule_defaults() -> dict[str, dict[str, Any]]:
    from .rules import ALL_RULES  # the rules package does not import this module

    return {rule.id: rule.defaults for rule in ALL_RULES}


def load_settings(path: str | Path | None) -> Settings:
    """Load settings from a TOML file (``None``: all defaults)."""
    if path is None:
        return Settings()
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return settings_from_mapping(data, str(path))


def resolve_practice_options(
    practice_id: str, defaults: dict[str, Any], overrides: dict[str, Any], source: str = "<config>"
) -> dict[str, Any]:
    """Merge a rule's documented defaults with user overrides, rejecting unknown keys."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if key in COMMON_PRACTICE_KEYS:
            where = f"{source}: [practices.{practice_id}] {key}"
            _check_type(where, value, COMMON_PRACTICE_KEYS[key])
            if key == "clear_after_seconds":
                _check_range(where, key, value, 0.0)
            elif key == IGNORE_KEY and (problem := pattern_problem(value)):
                raise ConfigError(f"{where}: {problem}")
            merged[key] = value
            continue
        if key not in defaults:
            raise ConfigError(
                f"{source}: [practices.{practice_id}] has unknown key {key!r}; "
                f"known: {sorted(set(defaults) | set(COMMON_PRACTICE_KEYS))}"
            )
        default = defaults[key]
        if isinstance(default, bool):
            expected: Any = bool
        elif isinstance(default, (int, float)):
            expected = (int, float)
        elif isinstance(default, (list, tuple)):
            expected = (list, tuple)
        else:
            expected = type(default)
        where = f"{source}: [practices.{practice_id}] {key}"
        _check_type(where, value, expected)
        _check_range(where, key, value, default)
        merged[key] = value
    return merged
