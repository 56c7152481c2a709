"""orm_object_argument: task messages whose argument reprs hold ORM model instances.

Celery puts ``argsrepr``/``kwargsrepr`` (``repr()`` of the arguments, truncated by Celery)
into task-sent/task-received events as ``args``/``kwargs``. One pass over at most
``max_scan_chars`` characters finds reprs shaped like model instances outside string
literals -- Django ``<Model: ...>``, default ``<pkg.Class object at 0x...>``, SQLAlchemy
``<Class(id=...)>`` and ``<Class at 0x...>`` -- and records only the argument position
(or keyword name) and the class name, never a value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..findings import Condition
from .base import Rule

_MAX_KEYS = 2000
_IDENT = re.compile(r"[A-Za-z_][\w.]{0,120}")
_HEX = re.compile(r"0x[0-9a-fA-F]{1,16}>")
_KWNAME = re.compile(r"\s*['\"]([A-Za-z_]\w{0,63})['\"]\s*:\s*$")


def _model_class(text: str, i: int) -> tuple[str | None, int]:
    """At ``text[i] == '<'``: the class name if a model-like repr starts here."""
    m = _IDENT.match(text, i + 1)
    if m is None:
        return None, i + 1
    name = m.group(0)
    j = m.end()
    rest = text[j:j + 16]
    if rest.startswith(": "):  # Django  <Model: str>
        if name[0].isupper() and "." not in name:
            return name, j
        return None, j
    if rest.startswith(" object at 0x") and _HEX.match(text, j + 11):  # default repr
        return name.rsplit(".", 1)[-1], j
    if rest.startswith(" at 0x") and _HEX.match(text, j + 4):  # SQLAlchemy default
        return name.rsplit(".", 1)[-1], j
    if rest.startswith("(") and name[0].isupper() and re.match(  # <User(id=1, ...)>
            r"\(\s*[A-Za-z_]\w{0,63}\s*=", text[j:j + 70]):
        return name, j
    return None, j


def find_models(text: str, limit: int, keyword: bool) -> list[tuple[str, str]]:
    """``[(position_or_name, class_name)]`` for model reprs in a tuple/dict repr.

    O(len(text[:limit])): one pass tracking nesting depth and string literals.
    """
    text = text[:limit]
    out: list[tuple[str, str]] = []
    depth = 0
    position = 0
    seg_start = 1
    quote = ""
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c == "'" or c == '"':
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 1:
            position += 1
            seg_start = i + 1
        elif c == "<":
            name, nxt = _model_class(text, i)
            if name is not None:
                where = str(position)
                if keyword:
                    km = _KWNAME.match(text[seg_start:i][-80:])
                    where = km.group(1) if km else f"#{position}"
                if len(out) < 20:
                    out.append((where, name))
            i = nxt
            continue
        i += 1
    return out


class _Tally:
    __slots__ = ("count", "arguments", "last_seen")

    def __init__(self) -> None:
        self.count = 0
        self.arguments: dict[str, str] = {}
        self.last_seen = 0.0


class OrmObjectArgument(Rule):
    id = "orm_object_argument"
    defaults = {
        #: characters of each args/kwargs repr scanned (Celery truncates reprs anyway)
        "max_scan_chars": 4096,
        #: a finding stays active this long after the last offending message
        "window_seconds": 600.0,
        #: class names never reported (e.g. value objects with Django-like reprs)
        "ignore_classes": [],
    }

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.limit = int(options["max_scan_chars"])
        self.ignore = frozenset(options["ignore_classes"])
        self.tallies: dict[tuple[str, str], _Tally] = {}

    def hooks(self):
        return {"task-sent": self._on_message, "task-received": self._on_message}

    def _on_message(self, event: dict, rec: Any) -> None:
        if event["type"] == "task-received" and rec is not None and rec.has_sent:
            return  # already scanned at task-sent
        args = event.get("args")
        kwargs = event.get("kwargs")
        found: list[tuple[str, str]] = []
        if isinstance(args, str) and "<" in args:
            found = find_models(args, self.limit, keyword=False)
        if isinstance(kwargs, str) and "<" in kwargs:
            found += find_models(kwargs, self.limit, keyword=True)
        if self.ignore:
            found = [f for f in found if f[1] not in self.ignore]
        if not found:
            return
        queue = rec.queue if rec is not None else ""
        task = rec.name if rec is not None else ""
        key = (queue, task)
        tally = self.tallies.get(key)
        if tally is None:
            if len(self.tallies) >= _MAX_KEYS:
                return
            tally = self.tallies[key] = _Tally()
        tally.count += 1
        tally.last_seen = event["timestamp"]
        for where, cls in found:
            if where in tally.arguments or len(tally.arguments) < 20:
                tally.arguments[where] = cls
        self.count(queue or None, task or None)

    def evaluate(self, now: float) -> Iterable[Condition]:
        window = float(self.options["window_seconds"])
        for key in [k for k, t in self.tallies.items() if now - t.last_seen > window]:
            del self.tallies[key]
        app = self.ctx.app
        for (queue, task), tally in self.tallies.items():
            classes = sorted(set(tally.arguments.values()))
            evidence: dict[str, Any] = {
                "messages": tally.count,
                "arguments": [{"argument": w, "class": c}
                              for w, c in sorted(tally.arguments.items())],
            }
            if app is not None:
                evidence["task_serializer"] = app.task_serializer
            yield Condition(
                summary=(f"{task or 'a task'}: {tally.count} message(s) carry model "
                         f"instances ({', '.join(classes)}); pass primary keys instead"),
                queue=queue or None, task=task or None, evidence=evidence,
                count=tally.count)
