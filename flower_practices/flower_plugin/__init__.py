"""The Flower plugin: ``celery flower-practices`` and a one-line ``flowerconfig.py`` activation.

Flower 2.x has no plugin system; :mod:`.app` adds one by swapping the ``Flower`` class the
``flower`` command instantiates for a subclass that installs the plugins named by the
``--plugins`` option (see :mod:`.registry`). The ``flower_practices`` plugin itself lives
in :mod:`.plugin`.
"""

SUPPORTED_FLOWER = ">=2.0,<2.3"
