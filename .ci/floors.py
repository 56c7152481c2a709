"""The lowest versions pyproject.toml allows for the runtime dependencies, one
``name==X`` a line (for .ci/floors); ``--verify`` checks that the running environment
holds exactly those versions."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

_SPEC = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def floors(pyproject: Path) -> dict[str, str]:
    """``{name: lowest allowed version}``; every dependency must state a ``>=`` floor."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        name, rest = _SPEC.match(dep.split(";")[0]).groups()
        lows = [c.strip()[2:].strip() for c in rest.split(",") if c.strip().startswith(">=")]
        if len(lows) != 1:
            raise SystemExit(f"{dep!r}: state exactly one '>=' floor")
        out[name] = lows[0]
    return out


def _release(v: str) -> tuple[int, ...]:
    """``"5.3"`` and ``"5.3.0"`` alike: the numeric release, trailing zeros dropped."""
    parts = [int(x) for x in re.findall(r"\d+", v.split("+")[0])]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def main() -> int:
    found = floors(Path(__file__).resolve().parents[1] / "pyproject.toml")
    if "--verify" not in sys.argv[1:]:
        print("\n".join(f"{name}=={low}" for name, low in found.items()))
        return 0
    wrong = {name: (low, version(name)) for name, low in found.items()
             if _release(version(name)) != _release(low)}
    for name, (low, got) in wrong.items():
        print(f"{name}: floor {low}, installed {got}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
