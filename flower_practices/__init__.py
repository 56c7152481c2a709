"""flower-practices: flag Celery deployments that break well-known best practices, at runtime.

The package is organised as: event ingestion (``events``), bounded runtime state
(``state``), one module per practice (``rules``), the engine that feeds rules and
tracks findings (``engine``, ``findings``), broker probes (``probes``), Prometheus
exposition (``metrics``), and the two front ends: the standalone exporter
(``exporter``) and the Flower plugin (``flower_plugin``).
"""

__version__ = "0.1.0"
