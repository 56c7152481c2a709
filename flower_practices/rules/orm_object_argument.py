"""orm_object_argument: task messages whose argument reprs hold ORM model instances.

Celery puts ``argsrepr``/``kwargsrepr`` (``repr()`` of the arguments, truncated by Celery)
into task-sent/task-received events as ``args``/``kwargs``. One pass over at most
``max_scan_chars`` characters finds reprs shaped like model instances outside string
literals -- Django ``<Model: ...>``, default ``<pkg.Class object at 0x...>``, SQLAlchemy
``<Class(id=...)>`` and ``<Class at 0x...>`` -- and records only the argument position
(or keyword name) and the class name, never a value.

The text after ``<Model: `` is the model's ``__str__``: free text, not structure. Quotes
(``<User: O'Brien>``), commas (``<User: Smith, John>``) or a ``<Token: ...>`` inside it say
nothing about the arguments, so the scanner skips it to the matching ``>`` (nesting-aware,
at most ``_MAX_STR`` characters; an unmatched ``<`` inside falls back to the first ``>``),
without tracking quotes or commas. The whole scan stays O(len) thanks to a shared budget
of bracket steps; past it a ``__str__`` simply ends at its first ``>``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..events.types import TASK_RECEIVED, TASK_SENT
from ..findings import Condition
from .base import Rule

if TYPE_CHECKING:
    from ..appinfo import AppInfo

_MAX_KEYS = 2000
#: characters of one Django ``__str__`` searched for its closing ``>`` (nesting-aware)
_MAX_STR = 256
#: models reported per message
_MAX_FOUND = 20
#: ids of tasks scanned at a task-received that came before their task-sent (two
#: publishers, no order between them): the late task-sent is the same message, not a
#: second one. Reordering spans moments, so a short memory suffices.
_MAX_REORDERED = 1024
_IDENT = re.compile(r"[A-Za-z_][\w.]{0,120}")
_HEX = re.compile(r"0x[0-9a-fA-F]{1,16}>")
_KWNAME = re.compile(r"\s*['\"]([A-Za-z_]\w{0,63})['\"]\s*:\s*$")
_SQLA_ARGS = re.compile(r"\(\s*[A-Za-z_]\w{0,63}\s*=")

#: what :func:`_model_class` saw at a ``<``
_NONE, _DJANGO, _OTHER = 0, 1, 2


def _model_class(text: str, i: int) -> tuple[str | None, int, int]:
    """At ``text[i] == '<'``: ``(class name, where to resume, kind)``.

    For a Django repr the resume index is the start of its ``__str__`` (the caller skips
    it); for the default and SQLAlchemy ``at 0x`` reprs it is past the closing ``>``.
    """
    m = _IDENT.match(text, i + 1)
    if m is None:
        return None, i + 1, _NONE
    name = m.group(0)
    j = m.end()
    rest = text[j:j + 16]
    if rest.startswith(": "):  # Django  <Model: str>
        if name[0].isupper() and "." not in name:
            return name, j + 2, _DJANGO
        return None, j, _NONE
    if rest.startswith(" object at 0x"):  # default repr
        hexm = _HEX.match(text, j + 11)
        if hexm:
            return name.rsplit(".", 1)[-1], hexm.end(), _OTHER
    if rest.startswith(" at 0x"):  # SQLAlchemy default
        hexm = _HEX.match(text, j + 4)
        if hexm:
            return name.rsplit(".", 1)[-1], hexm.end(), _OTHER
    if rest.startswith("(") and name[0].isupper() and _SQLA_ARGS.match(text, j, j + 70):
        return name, j, _OTHER  # <User(id=1, ...)>: the main loop reads the parentheses
    return None, j, _NONE


def find_models(text: str, limit: int, keyword: bool) -> list[tuple[str, str]]:
    """``[(position_or_name, class_name)]`` for model reprs in a tuple/dict repr.

    O(len(text[:limit])): one pass tracking nesting depth and string literals, skipping
    each Django ``__str__`` to its closing ``>`` (see the module docstring).
    """
    text = text[:limit]
    out: list[tuple[str, str]] = []
    depth = 0
    position = 0
    seg_start = 1
    quote = ""
    i = 0
    n = len(text)
    budget = n + 64  # bracket steps left for nesting-aware __str__ skips
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
            name, nxt, kind = _model_class(text, i)
            if name is not None and len(out) < _MAX_FOUND:
                where = str(position)
                if keyword:
                    km = _KWNAME.match(text[seg_start:i][-80:])
                    where = km.group(1) if km else f"#{position}"
                out.append((where, name))
            if kind == _DJANGO:
                nxt, budget = _skip_str(text, nxt, budget)
            i = nxt
            continue
        i += 1
    return out


def _skip_str(text: str, j: int, budget: int) -> tuple[int, int]:
    """Index just past the ``>`` closing a Django repr whose ``__str__`` starts at ``j``.

    Counts ``<``/``>`` (nesting) within ``_MAX_STR`` characters while ``budget`` lasts;
    when no balanced ``>`` is found, the first ``>`` after ``j`` closes it (none: the
    text ends inside it, as Celery's truncated reprs do).
    """
    first = text.find(">", j)
    if first < 0:
        return len(text), budget
    end = min(len(text), j + _MAX_STR)
    depth = 1
    k = j
    close = first if first < end else -1
    while close >= 0 and budget > 0:
        budget -= 1
        opening = text.find("<", k, close)
        if opening >= 0:
            depth += 1
            k = opening + 1
            continue
        depth -= 1
        if depth == 0:
            return close + 1, budget
        k = close + 1
        close = text.find(">", k, end)
    return first + 1, budget


class _Tally:
    __slots__ = ("count", "arguments", "last_seen")

    def __init__(self) -> None:
        self.count = 0
        self.arguments: dict[str, str] = {}
        self.last_seen = 0.0


class OrmObjectArgument(Rule):
    id = "orm_object_argument"

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.orm_object_argument]``)."""

        #: characters of each args/kwargs repr scanned (Celery truncates reprs anyway)
        max_scan_chars: int = 4096
        #: a finding stays active this long after the last offending message
        window_seconds: float = 600.0
        #: class names never reported (e.g. value objects with Django-like reprs)
        ignore_classes: tuple[str, ...] = ()

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.ignore = frozenset(self.opts.ignore_classes)
        self.tallies: dict[tuple[str, str], _Tally] = {}
        self._received_first: OrderedDict[str, None] = OrderedDict()

    def hooks(self):
        return {TASK_SENT: self._on_message, TASK_RECEIVED: self._on_message}

    def _on_message(self, event: dict, rec: Any) -> None:
        received = event["type"] == TASK_RECEIVED
        if self._scanned_before(event["uuid"], rec, received):
            return
        found = self._models(event)
        if not found:
            return
        if received:
            self._remember_received(event["uuid"])
        self._tally(event["timestamp"], rec, found)

    def _scanned_before(self, uuid: str, rec: Any, received: bool) -> bool:
        """This message was already scanned: at its task-sent (for a task-received), or
        at a task-received that overtook it (for a late task-sent)."""
        if received:
            return rec is not None and rec.has_sent
        return bool(self._received_first) and self._received_first.pop(uuid, 0) is None

    def _models(self, event: dict) -> list[tuple[str, str]]:
        """(argument position or keyword, class name) of the model reprs in the message."""
        args = event.get("args")
        kwargs = event.get("kwargs")
        limit = self.opts.max_scan_chars
        found: list[tuple[str, str]] = []
        if isinstance(args, str) and "<" in args:
            found = find_models(args, limit, keyword=False)
        if isinstance(kwargs, str) and "<" in kwargs:
            found += find_models(kwargs, limit, keyword=True)
        if self.ignore:
            found = [f for f in found if f[1] not in self.ignore]
        return found

    def _remember_received(self, uuid: str) -> None:
        received_first = self._received_first
        received_first[uuid] = None
        if len(received_first) > _MAX_REORDERED:
            received_first.popitem(last=False)

    def _tally(self, timestamp: float, rec: Any, found: list[tuple[str, str]]) -> None:
        queue = rec.queue if rec is not None else ""
        task = rec.name if rec is not None else ""
        key = (queue, task)
        tally = self.tallies.get(key)
        if tally is None:
            if len(self.tallies) >= _MAX_KEYS:
                return
            tally = self.tallies[key] = _Tally()
        tally.count += 1
        tally.last_seen = timestamp
        for where, cls in found:
            if where in tally.arguments or len(tally.arguments) < _MAX_FOUND:
                tally.arguments[where] = cls
        self.count(queue or None, task or None)

    def evaluate(self, now: float) -> Iterable[Condition]:
        window = self.opts.window_seconds
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
                queue=queue or None, task=task or None, evidence=evidence)

    @classmethod
    def static_check(cls, app: AppInfo) -> list[tuple[str | None, str]]:
        """The pickle serializer is used or accepted."""
        pickle = [s for s in ("task_serializer", "result_serializer")
                  if getattr(app, s) == "pickle"]
        if "pickle" in app.accept_content or \
                "application/x-python-serialize" in app.accept_content:
            pickle.append("accept_content")
        if not pickle:
            return []
        return [(None, f"pickle is enabled ({', '.join(pickle)}): model instances can "
                       "travel as task arguments; use json and pass primary keys")]
