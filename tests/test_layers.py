"""The layers depend one way: events -> state -> rules -> findings -> exposition.

Checked on the source: no module of the state/model layer or of the rules imports the
exposition (``metrics``) or a front end (``exporter``, ``flower_plugin``) at run time
(imports under ``if TYPE_CHECKING:`` are types only and allowed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "flower_practices"
LOWER_LAYERS = ["state.py", "bounded.py", "catalogue.py", "findings.py", "brokers.py",
                *sorted(f"rules/{p.name}" for p in (PKG / "rules").glob("*.py"))]
UPPER = ("metrics", "exporter", "flower_plugin", "runtime")


def runtime_imports(path: Path) -> set[str]:
    """Modules imported by ``path`` outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


@pytest.mark.parametrize("module", LOWER_LAYERS)
def test_lower_layers_do_not_import_exposition_or_front_ends(module: str) -> None:
    imports = runtime_imports(PKG / module)
    assert imports, f"{module}: no imports parsed (the check would be vacuous)"
    bad = sorted(m for m in imports
                 if m.lstrip(".").split(".")[0] in UPPER
                 or m.startswith("flower_practices.") and m.split(".")[1] in UPPER)
    assert bad == [], f"{module} imports {bad}"


def test_the_check_sees_a_violation() -> None:
    """The parser finds an upward import when there is one (the check can fail)."""
    assert ".metrics" in runtime_imports(PKG / "engine.py")  # the engine wires exposition
    assert "..metrics" not in runtime_imports(PKG / "rules" / "base.py")  # a type only
