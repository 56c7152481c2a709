"""What the ``celery.commands`` entry point adds to every ``celery`` command.

Celery imports every ``celery.commands`` entry point when its CLI starts, so importing
``flower_practices.flower_plugin.command`` (which makes Flower's ``flower`` command accept
``--plugins``) costs something on every ``celery`` invocation. Two figures, each the median
over ``--runs`` fresh interpreters:

* **import**: the time to import our module once everything Celery's CLI and Flower's own
  entry point (``flower.command``) load anyway is imported — the cost we add;
* **celery --help**: wall time of ``celery --help`` with our entry point, and with it
  filtered out of ``importlib.metadata.entry_points`` (noisier: process start-up dominates).

    python bench/plugin_import.py [--runs 21]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

IMPORT = """
import sys, time
import importlib.metadata as md
original = md.entry_points
def entry_points(**kw):
    eps = original(**kw)
    if kw.get("group") == "celery.commands":
        return [e for e in eps if e.name != "flower-practices"]
    return eps
md.entry_points = entry_points
import celery.bin.celery, celery.bin.base, click, flower.command  # what celery loads anyway
assert "flower_practices.flower_plugin.command" not in sys.modules
t0 = time.perf_counter()
import flower_practices.flower_plugin.command  # noqa: F401
print(time.perf_counter() - t0)
"""

HELP = """
import sys
import importlib.metadata as md
if sys.argv[1] == "without":
    original = md.entry_points
    def entry_points(**kw):
        eps = original(**kw)
        if kw.get("group") == "celery.commands":
            return [e for e in eps if e.name != "flower-practices"]
        return eps
    md.entry_points = entry_points
sys.argv = ["celery", "--help"]
from celery.bin.celery import main
try:
    main()
except SystemExit:
    pass
"""


def median_import_ms(runs: int) -> float:
    samples = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", IMPORT], capture_output=True, text=True,
                             check=True).stdout
        samples.append(float(out.strip()) * 1000.0)
    return statistics.median(samples)


def median_help_ms(runs: int, which: str) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", HELP, which], capture_output=True, check=True)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args(argv)
    imp = median_import_ms(args.runs)
    # interleave the two variants' runs so machine load affects both alike
    with_ep, without_ep = [], []
    for _ in range(args.runs):
        with_ep.append(median_help_ms(1, "with"))
        without_ep.append(median_help_ms(1, "without"))
    w, wo = statistics.median(with_ep), statistics.median(without_ep)
    print(f"import of the entry point (after what celery loads anyway): {imp:.1f} ms "
          f"(median of {args.runs})")
    print(f"celery --help: {w:.0f} ms with the entry point, {wo:.0f} ms without "
          f"(difference {w - wo:+.0f} ms; medians of {args.runs})")
    print("target: <= 10 ms:", "met" if imp <= 10.0 else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
