"""Prometheus alert rules for flower-practices, generated from the practice catalogue.

``python -m deploy.prometheus.generate`` writes the rules file, the PrometheusRule manifest
and the promtool unit tests beside this package; ``--check`` fails when they are stale.
"""
