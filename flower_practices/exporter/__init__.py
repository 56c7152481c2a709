"""The standalone exporter: a small tornado server in front of an :class:`Engine`."""
