"""Per-practice task ignores: ``ignore_tasks = ["proj.tasks.legacy_*"]`` in ``[practices.<id>]``.

One setting, one meaning everywhere: a task whose name matches one of the glob patterns
(:mod:`fnmatch` syntax, case-sensitive: ``*``, ``?``, ``[seq]``) gets no finding of that
practice from ``flower-practices check``, and at run time (exporter and Flower plugin)
its occurrences are not counted (no ``celery_practice_violations_total`` increase, no
finding count) and no finding is raised for it. Findings that name no task (app-wide or
per-queue ones) are still raised; occurrences of ignored tasks do not add to their count.

The match is decided once per task name and cached (bounded), so the runtime cost is a
dict lookup per counted occurrence.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

#: the config key (in every ``[practices.<id>]`` table)
IGNORE_KEY = "ignore_tasks"
#: patterns per practice, and characters per pattern, accepted in the configuration
MAX_PATTERNS = 200
MAX_PATTERN_CHARS = 200
#: task names whose match is remembered; past it, names are matched each time
_MAX_CACHED = 10_000


def pattern_problem(patterns: object) -> str | None:
    """Why ``patterns`` is not a valid ``ignore_tasks`` value (None when it is)."""
    if not isinstance(patterns, (list, tuple)):
        return f"expected a list of task-name patterns, got {type(patterns).__name__}"
    if len(patterns) > MAX_PATTERNS:
        return f"at most {MAX_PATTERNS} patterns, got {len(patterns)}"
    for item in patterns:
        if not isinstance(item, str):
            return f"expected a list of strings, found {type(item).__name__} {item!r:.60}"
        if not item.strip() or item != item.strip():
            return f"a pattern must be a non-empty task name pattern without surrounding " \
                   f"spaces, got {item!r:.60}"
        if len(item) > MAX_PATTERN_CHARS:
            return f"a pattern is at most {MAX_PATTERN_CHARS} characters, got {len(item)}"
        if any(ord(c) < 32 or ord(c) == 127 for c in item):
            return f"a pattern must not contain control characters, got {item!r:.60}"
    return None


class TaskIgnore:
    """Matches task names against glob patterns; ``ignored(name)`` is cached per name."""

    __slots__ = ("patterns", "_regex", "_cache")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._regex = re.compile("|".join(fnmatch.translate(p) for p in self.patterns))
        self._cache: dict[str, bool] = {}

    def ignored(self, task: str | None) -> bool:
        """Whether ``task`` matches a pattern (None -- no task -- never does)."""
        if not task:
            return False
        hit = self._cache.get(task)
        if hit is None:
            hit = self._regex.match(task) is not None
            if len(self._cache) < _MAX_CACHED:
                self._cache[task] = hit
        return hit


def task_ignore(options: dict) -> TaskIgnore | None:
    """The matcher for a practice's resolved options; None when nothing is ignored."""
    patterns = options.get(IGNORE_KEY)
    return TaskIgnore(patterns) if patterns else None
