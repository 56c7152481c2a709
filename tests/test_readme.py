"""The README stays true: generated reference tables, links, commands and option names."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from flower_practices import reference
from flower_practices.cli import main
from flower_practices.metrics import METRICS
from flower_practices.rules import ALL_RULES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_reference_tables_match_the_code() -> None:
    assert reference.render(README) == README, (
        "README reference tables are stale: run python -m flower_practices.reference")


def test_every_metric_and_option_is_documented() -> None:
    for name in METRICS:
        assert f"| `{name}` |" in README, name
    for rule in ALL_RULES:
        for key in rule.defaults:
            assert f"| `{rule.id}` | `{key}` |" in README, (rule.id, key)


def test_reference_check_fails_on_a_stale_table(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(README.replace("| `celery_worker_up` |", "| `celery_worker_upp` |"),
                     encoding="utf-8")
    assert reference.main(["--check", "--readme", str(stale)]) == 1
    assert reference.main(["--readme", str(stale)]) == 0
    assert reference.main(["--check", "--readme", str(stale)]) == 0


def test_no_unfilled_placeholders() -> None:
    leftovers = re.findall(r"^[A-Z][A-Z_]+_(?:SECTION|TABLE)$", README, flags=re.M)
    assert leftovers == []


def test_local_links_exist() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_documented_subcommands_and_options_exist() -> None:
    runner = CliRunner()
    used = set(re.findall(r"^\$? ?flower-practices (\w+)", README, flags=re.M))
    used |= set(re.findall(r"&& flower-practices (\w+)", README))
    assert {"demo", "exporter", "check"} <= used
    for sub in used:
        result = runner.invoke(main, [sub, "--help"])
        assert result.exit_code == 0, (sub, result.output)
        for option in re.findall(rf"flower-practices {sub}\b[^\n]*", README):
            for flag in re.findall(r"(--[a-z][a-z-]*)", option):
                assert flag in result.output, f"flower-practices {sub} has no {flag}"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README, flags=re.S)
    test_command = next(b.strip() for b in blocks if "pytest" in b)
    ci_lines = [line.strip() for line in
                (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert test_command in ci_lines
    # nothing after it: the runner's closing line is the README command's own
    after = ci_lines[ci_lines.index(test_command) + 1:]
    assert [line for line in after if line and not line.startswith(("log ", "#"))] == []
