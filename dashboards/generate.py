"""Render the dashboards to JSON beside this package, or check the committed files.

Usage::

    python -m dashboards.generate          # (re)write dashboards/*.json and the chart's
    python -m dashboards.generate --check  # exit 1 if a committed file differs

Also writes the Helm chart's copies (``deploy/helm/flower-practices/files/dashboards/``),
built with :data:`CHART_SETTINGS`; ``--check`` is :func:`tools.codegen.run`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from tools import codegen

from . import practices, queues, tasks, workers
from .common import configured

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


#: the Helm chart's copies (deploy/helm/flower-practices/templates/dashboards.yaml): the
#: same dashboards with the cluster and namespace pickers shown (Kubernetes)
CHART_DIR = HERE.parent / "deploy/helm/flower-practices/files/dashboards"
CHART_SETTINGS = {"show_multi_cluster": True}
COMMAND = "python -m dashboards.generate"


def render_all() -> dict[str, str]:
    return {name: render(build) for name, build in DASHBOARDS.items()}


def committed() -> dict[Path, str]:
    """Every file the generator owns: dashboards/*.json and the chart's copies."""
    files = {HERE / name: text for name, text in render_all().items()}
    with configured(**CHART_SETTINGS):
        files.update({CHART_DIR / name: text for name, text in render_all().items()})
    return files


def stale(directory: Path = HERE) -> list[str]:
    """Names of the committed files (those in ``directory``, and the chart's copies) that
    are missing or differ from the generator's output."""
    files = {directory / path.name if path.parent == HERE else path: text
             for path, text in committed().items()}
    return [str(path.relative_to(directory)) if path.parent == directory else
            str(path.relative_to(HERE.parent)) for path in codegen.stale(files)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if committed JSON differs")
    args = parser.parse_args(argv)
    return codegen.run(committed(), check=args.check, command=COMMAND)


if __name__ == "__main__":
    raise SystemExit(main())
