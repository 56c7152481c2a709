"""One-line activation for stock ``celery flower``: put this in ``flowerconfig.py``::

    import flower_practices.flower_plugin.activate  # noqa: F401

Flower reads ``flowerconfig.py`` before it builds its application, so importing this module
there is enough: the plugins named by ``plugins`` (default ``flower_practices``) are installed.
"""

from .app import enable

enable()
