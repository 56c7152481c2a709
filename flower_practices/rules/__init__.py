"""One module per practice; ``ALL_RULES`` lists the rule classes the engine runs."""

from __future__ import annotations

from .base import Rule

ALL_RULES: list[type[Rule]] = []
