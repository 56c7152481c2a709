"""Write or check a set of generated files: the one ``--check`` behind every generator.

A generator renders ``{path: text}``; :func:`run` writes the files, or with ``check``
reports the stale ones (missing or different) and returns 1 -- what CI and the drift tests
call. :func:`stale` is the same comparison for tests.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path


def stale(files: Mapping[Path, str]) -> list[Path]:
    """The paths whose committed content is missing or differs from ``files``."""
    return [path for path, text in files.items()
            if not path.exists() or path.read_text(encoding="utf-8") != text]


def write(files: Mapping[Path, str]) -> list[Path]:
    """Write the files whose content changed (parents created); return those written."""
    written = []
    for path in stale(files):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path], encoding="utf-8")
        written.append(path)
    return written


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run(files: Mapping[Path, str], *, check: bool, command: str) -> int:
    """Write ``files`` (exit status 0), or with ``check`` exit 1 naming the stale ones
    and the ``command`` that regenerates them."""
    if check:
        bad = stale(files)
        if bad:
            print(f"out of date (run {command}): " + ", ".join(_shown(p) for p in bad),
                  file=sys.stderr)
            return 1
        print(f"{len(files)} generated file(s) up to date")
        return 0
    written = write(files)
    for path in written:
        print(f"wrote {_shown(path)}")
    if not written:
        print(f"{len(files)} generated file(s) already up to date")
    return 0
