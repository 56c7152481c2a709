"""Grafana dashboards for flower-practices, written with grafana-foundation-sdk.

``python -m dashboards.generate`` writes the JSON files beside this package;
``python -m dashboards.generate --check`` fails when they differ from the generator.
"""
