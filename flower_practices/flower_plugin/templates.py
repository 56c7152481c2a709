"""Template loading: Flower's templates, ours next to them, and a "Practices" navbar tab.

:class:`PluginLoader` serves Flower's templates, our ``templates/`` files (which extend
Flower's ``base.html``), and Flower's ``navbar.html`` with one extra ``<li>`` added to the
primary navigation. The tab only renders on apps that have the plugin installed, so a
stock Flower app sharing the loader cache in the same process is unaffected.
"""

from __future__ import annotations

import logging
import os

from tornado.template import Loader, Template
from tornado.web import RequestHandler

log = logging.getLogger("flower_practices.flower_plugin")

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
APP_ATTR = "flower_practices"

NAV_ITEM = """
        {% if getattr(handler.application, "flower_practices", None) is not None %}
        <li class="nav-item">
          <a class="nav-link{% if active_tab == 'practices' %} active{% end %}"
            href="{{ reverse_url('practices') }}"
            {% if active_tab == 'practices' %}aria-current="page"{% end %}>Practices</a>
        </li>
        {% end %}
"""
NAV_ANCHOR = "</ul>"


def inject_nav_item(navbar: str) -> str:
    """Flower's navbar with the Practices tab appended to the first (primary) list."""
    index = navbar.find(NAV_ANCHOR)
    if index < 0 or "reverse_url('practices')" in navbar:
        return navbar
    return navbar[:index] + NAV_ITEM.lstrip("\n") + "      " + navbar[index:]


class PluginLoader(Loader):
    """Flower's template directory plus ours; patches ``navbar.html``."""

    def _create_template(self, name: str) -> Template:
        ours = os.path.join(HERE, name)
        if os.path.isfile(ours):
            with open(ours, "rb") as f:
                return Template(f.read(), name=name, loader=self)
        if name == "navbar.html":
            with open(os.path.join(self.root, name), encoding="utf-8") as f:
                text = f.read()
            patched = inject_nav_item(text)
            if patched == text:
                log.warning("Flower's navbar.html has an unexpected layout; "
                            "the Practices tab is not shown (the page is at /practices)")
            return Template(patched, name=name, loader=self)
        return super()._create_template(name)


def install_loader(settings: dict) -> PluginLoader:
    """Use :class:`PluginLoader` for Flower's template path (also in tornado's loader cache)."""
    path = settings["template_path"]
    loader = settings.get("template_loader")
    if not isinstance(loader, PluginLoader):
        loader = PluginLoader(path)
        settings["template_loader"] = loader
    cache = getattr(RequestHandler, "_template_loaders", None)
    lock = getattr(RequestHandler, "_template_loader_lock", None)
    if isinstance(cache, dict) and lock is not None:
        with lock:
            cache[path] = loader
    return loader
