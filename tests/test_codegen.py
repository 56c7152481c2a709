"""tools/codegen.py, the write-or-check helper behind the three generators."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import codegen


def test_write_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {tmp_path / "a.json": "{}\n", tmp_path / "sub" / "b.yml": "x: 1\n"}
    assert codegen.stale(files) == list(files)
    assert codegen.run(files, check=True, command="gen") == 1
    assert "out of date (run gen)" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()  # --check never writes

    assert codegen.run(files, check=False, command="gen") == 0
    assert (tmp_path / "sub" / "b.yml").read_text() == "x: 1\n"
    assert codegen.stale(files) == []
    assert codegen.run(files, check=True, command="gen") == 0


def test_check_names_only_the_stale_files(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    files = {tmp_path / "a": "A\n", tmp_path / "b": "B\n", tmp_path / "c": "C\n"}
    codegen.write(files)
    (tmp_path / "a").write_text("edited by hand\n")
    (tmp_path / "c").unlink()
    assert codegen.stale(files) == [tmp_path / "a", tmp_path / "c"]
    assert codegen.run(files, check=True, command="gen") == 1
    err = capsys.readouterr().err
    assert "a" in err and "c" in err and str(tmp_path / "b") not in err
    # writing touches only what changed
    before = (tmp_path / "b").stat().st_mtime_ns
    assert codegen.write(files) == [tmp_path / "a", tmp_path / "c"]
    assert (tmp_path / "b").stat().st_mtime_ns == before


@pytest.mark.parametrize("module", ["dashboards.generate", "deploy.prometheus.generate",
                                    "flower_practices.reference"])
def test_every_generator_checks_through_the_helper(module: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each generator's --check goes through codegen.run (one implementation)."""
    import importlib

    calls = []

    def spy(files, *, check: bool, command: str) -> int:
        calls.append((check, command, len(files)))
        return 0

    monkeypatch.setattr(codegen, "run", spy)
    main = importlib.import_module(module).main
    assert main(["--check"]) == 0
    assert calls and calls[0][0] is True and calls[0][1].startswith("python -m ")
