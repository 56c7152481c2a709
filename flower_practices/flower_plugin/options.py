"""The plugin's own Flower options, defined as tornado options next to Flower's.

Because they are tornado options, Flower's own parsing handles them from the command line
(``--plugins=a,b``), the environment (``FLOWER_PLUGINS=a,b``) and ``flowerconfig.py``
(``plugins = ["a", "b"]`` or ``plugins = "a,b"``).
"""

from __future__ import annotations

from tornado.options import options

DEFAULT_PLUGINS = ("flower_practices",)


def define_options() -> None:
    """Define ``plugins``, ``practices_config``, ``practices_state_dir`` and
    ``practices_metrics_auth`` (idempotent)."""
    if "plugins" not in options:
        options.define("plugins", type=str, multiple=True, default=[],
                       group="flower-practices",
                       help="comma-separated Flower plugins to install "
                            f"(default: {','.join(DEFAULT_PLUGINS)})")
    if "practices_config" not in options:
        options.define("practices_config", type=str, default=None, group="flower-practices",
                       help="TOML settings file of the flower_practices plugin")
    if "practices_state_dir" not in options:
        options.define("practices_state_dir", type=str, default=None,
                       group="flower-practices",
                       help="directory of the flower_practices state file keeping findings "
                            "across restarts (default: $XDG_STATE_HOME/flower-practices or "
                            "~/.local/state/flower-practices; 'none' disables)")
    if "practices_metrics_auth" not in options:
        options.define("practices_metrics_auth", type=bool, default=False,
                       group="flower-practices",
                       help="put Flower's /metrics behind Flower's --basic_auth/--auth "
                            "(Flower serves it unauthenticated by default)")


def requested_plugins(opts) -> list[str]:
    """Plugin names from the parsed options; the default list when none were given."""
    raw = getattr(opts, "plugins", None) or []
    if isinstance(raw, str):
        raw = [raw]
    names: list[str] = []
    for item in raw:
        for name in str(item).split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names or list(DEFAULT_PLUGINS)
