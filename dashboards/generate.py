"""Render the dashboards to JSON beside this package, or check the committed files.

Usage::

    python -m dashboards.generate          # (re)write dashboards/*.json
    python -m dashboards.generate --check  # exit 1 if a committed file differs
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from . import practices, queues, tasks, workers

HERE = Path(__file__).resolve().parent

#: file name -> builder function
DASHBOARDS: dict[str, Callable[[], db.Dashboard]] = {
    "celery-practices.json": practices.build,
    "celery-queues.json": queues.build,
    "celery-tasks.json": tasks.build,
    "celery-workers-exporter.json": workers.build,
}


def render(build: Callable[[], db.Dashboard]) -> str:
    """The dashboard as pretty, key-sorted JSON (stable for diffs)."""
    model = build().build()
    # Grafana wants a unique id per panel (rows included); number them in layout order.
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def render_all() -> dict[str, str]:
    return {name: render(build) for name, build in DASHBOARDS.items()}


def stale(directory: Path = HERE) -> list[str]:
    """Names of committed files that are missing or differ from the generator output."""
    out = []
    for name, text in render_all().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            out.append(name)
    return out


def write(directory: Path = HERE) -> list[Path]:
    paths = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.generate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if committed JSON differs")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        if bad:
            print("out of date (run python -m dashboards.generate): " + ", ".join(bad),
                  file=sys.stderr)
            return 1
        print(f"{len(DASHBOARDS)} dashboards up to date")
        return 0
    for path in write():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
