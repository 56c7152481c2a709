"""The Flower plugin: ``celery flower --plugins=flower_practices``.

Flower 2.x has no plugin system; :mod:`.host` adds one (the ``--plugins`` option, the
``flower.plugins`` entry points, a ``Flower`` subclass that installs the named plugins),
switched on by :mod:`.command`, the ``celery.commands`` entry point Celery imports with its
command line. The ``flower_practices`` plugin itself: :mod:`.plugin` (engine, event tap,
timers, metrics) and :mod:`.web` (pages, API, templates). :mod:`.activate` is kept for
``flowerconfig.py`` files of earlier releases.
"""

SUPPORTED_FLOWER = ">=2.0,<2.3"
