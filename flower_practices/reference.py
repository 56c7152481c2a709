"""The README's reference tables, generated from the code they describe.

The ``[exporter]`` keys come from :class:`~flower_practices.config.Settings`, the per-practice
options from each rule's ``defaults`` (their ``#:`` comments are the descriptions), and the
metrics from :data:`~flower_practices.metrics.METRICS`. The README holds each table between
``<!-- reference:NAME -->`` and ``<!-- /reference:NAME -->`` markers.

Usage::

    python -m flower_practices.reference          # rewrite the tables in README.md
    python -m flower_practices.reference --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from .catalogue import PRACTICES
from .config import Settings
from .metrics import METRICS
from .rules import ALL_RULES

README = Path(__file__).resolve().parent.parent / "README.md"

_KEY_LINE = re.compile(r'^\s*"?(?P<key>[a-z_]+)"?\s*[:=]')


def _comments(source: str) -> dict[str, str]:
    """``#:`` comment text per key, for ``key: type = ...`` fields and ``"key": ...`` items."""
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = _KEY_LINE.match(line)
        if match and pending:
            out[match.group("key")] = " ".join(pending)
        pending = []
    return out


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, (list, tuple)):
        return "`[]`" if not value else f"{len(value)} names (see the rule's module)"
    return f"`{value}`"


def _cell(text: str) -> str:
    text = re.sub(r'"?__other__"?', "`__other__`", text)
    return text.replace("|", "\\|")


def exporter_table() -> str:
    docs = _comments(inspect.getsource(Settings))
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        if f.name == "practices":
            continue
        default = f.default if f.default is not MISSING else None
        shown = "(the project's runbooks)" if f.name == "runbook_base_url" else _value(default)
        rows.append(f"| `{f.name}` | {shown} | {_cell(docs.get(f.name, ''))} |")
    return "\n".join(rows)


def practice_options_table() -> str:
    rows = ["| practice | key | default | meaning |", "|---|---|---|---|"]
    by_id = {rule.id: rule for rule in ALL_RULES}
    for p in PRACTICES:
        rule = by_id[p.id]
        docs = _comments(inspect.getsource(rule))
        if not rule.defaults:
            rows.append(f"| `{p.id}` | — | | only `enabled`, `severity`, "
                        "`clear_after_seconds`, `ignore_tasks` |")
        for key, default in rule.defaults.items():
            rows.append(f"| `{p.id}` | `{key}` | {_value(default)} | "
                        f"{_cell(docs.get(key, ''))} |")
    return "\n".join(rows)


def metrics_table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name, (kind, help_text, labels) in METRICS.items():
        shown = ", ".join(f"`{label}`" for label in labels) or "—"
        rows.append(f"| `{name}` | {kind} | {shown} | {_cell(help_text)} |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[], str]] = {
    "exporter-settings": exporter_table,
    "practice-options": practice_options_table,
    "metrics": metrics_table,
}


def render(text: str) -> str:
    """``text`` with every marked table replaced by the generator's output."""
    for name, build in TABLES.items():
        begin, end = f"<!-- reference:{name} -->", f"<!-- /reference:{name} -->"
        if begin not in text or end not in text:
            raise ValueError(f"README has no {begin} ... {end} block")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{build()}\n{end}{tail}"
    return text


def main(argv: list[str] | None = None) -> int:
    # a repository tool (tools/ is not installed with the package): imported here only
    from tools.codegen import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    wanted = render(args.readme.read_text(encoding="utf-8"))
    return run({args.readme: wanted}, check=args.check,
               command="python -m flower_practices.reference")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
