"""The plugin works on every Flower release the package supports, not just the installed one.

``pyproject.toml`` pins ``flower>=2.0,<2.3``. The installed release runs the plugin tests in
the main run; here every other supported release is installed (``pip install --no-deps
--target``: Flower's own dependencies are the same across 2.x) into a temporary
directory put first on ``PYTHONPATH``, and the plugin's handler and integration tests run
against it in a subprocess — including real ``celery flower-practices`` processes, which
log the Flower release they run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import flower
import pytest

from tests.support.brokers import in_ci

ROOT = Path(__file__).resolve().parent.parent

#: the supported Flower releases (the last patch of each minor); keep in step with the pin
SUPPORTED = ("2.0.1", "2.1.0", "2.2.0")

PLUGIN_TESTS = ["tests/test_flower_plugin.py", "tests/test_flower_plugin_integration.py",
                "tests/test_flower_plugin_browser.py"]

pytestmark = pytest.mark.slow


def test_supported_releases_match_the_pin() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    pin = re.search(r'"flower>=([\d.]+),<([\d.]+)"', pyproject)
    assert pin, "flower pin not found in pyproject.toml"
    low, high = (tuple(int(x) for x in v.split(".")) for v in pin.groups())
    minors = {tuple(int(x) for x in v.split("."))[:2] for v in SUPPORTED}
    assert minors == {(2, m) for m in range(low[1], high[1])}
    assert flower.__version__ in SUPPORTED


@pytest.mark.parametrize("version", [v for v in SUPPORTED if v != flower.__version__])
def test_plugin_tests_pass_on_flower(version: str, tmp_path: Path) -> None:
    target = tmp_path / f"flower-{version}"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         f"flower=={version}"], capture_output=True, text=True, timeout=300)
    if pip.returncode != 0:
        why = f"cannot install flower=={version}: {pip.stderr.strip()[-500:]}"
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    env = {**os.environ, "FP_EXPECT_FLOWER_VERSION": version,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(target), str(ROOT),
                                                        os.environ.get("PYTHONPATH")]))}
    probe = subprocess.run([sys.executable, "-c", "import flower; print(flower.__version__)"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == version, probe.stderr
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PLUGIN_TESTS],
        env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=900)
    tail = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    summary = run.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, tail
