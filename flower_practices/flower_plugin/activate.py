"""Kept for ``flowerconfig.py`` files written for earlier releases::

    import flower_practices.flower_plugin.activate  # noqa: F401

Not needed any more: ``plugins = ["flower_practices"]`` in ``flowerconfig.py`` is enough
(see :mod:`.host`). Importing this module also makes ``flower_practices`` the default plugin.
"""

from .host import DEFAULT_PLUGINS, enable

enable(default=DEFAULT_PLUGINS)
