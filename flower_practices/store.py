"""The state file: active findings and the rules' memory, kept across restarts.

An embedded SQLite database (stdlib ``sqlite3``, WAL mode) in a state directory, one file
per broker (the file name is a hash of the broker URL without its password, so two
exporters watching two brokers from one directory never mix). The engine takes a
snapshot under its lock after each evaluation and hands it to :meth:`StateStore.save`,
which writes only when the snapshot changed -- outside the lock, off the event hot path.

A state file that cannot be read (corrupt, not SQLite, a schema from elsewhere) is
logged, counted in ``flower_practices_state_errors_total{kind="load"}``, moved aside as
``<name>.corrupt-<unix time>`` and the exporter starts empty: it never refuses to start
because of its state. A failed write is logged once and counted (``kind="save"``); the
next evaluation tries again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .brokers import redact

log = logging.getLogger("flower_practices.store")

#: bump when the layout changes; a file of another version is set aside, not misread
SCHEMA_VERSION = 1
#: environment variable naming the state directory (the CLI's and the plugin's default)
ENV_VAR = "FLOWER_PRACTICES_STATE_DIR"
#: values of ``--state-dir`` that turn persistence off
DISABLED = frozenset({"", "none", "off"})


def default_state_dir() -> str:
    """``$FLOWER_PRACTICES_STATE_DIR``, else ``$XDG_STATE_HOME/flower-practices``, else
    ``~/.local/state/flower-practices``."""
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return env
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "flower-practices")


def state_file_name(broker_url: str) -> str:
    """``state-<hash>.sqlite3``: one file per broker, its password not part of the key."""
    digest = hashlib.sha256(redact(broker_url).encode("utf-8", "replace")).hexdigest()
    return f"state-{digest[:16]}.sqlite3"


@dataclass(slots=True)
class Snapshot:
    """What survives a restart: findings as dicts, and each rule's memory (JSON-able)."""

    findings: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    saved_at: float = 0.0


class StateStore:
    """One broker's state file in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str], broker_url: str) -> None:
        self.directory = Path(directory).expanduser()
        self.broker = redact(broker_url)
        self.path = self.directory / state_file_name(broker_url)
        #: failures by kind ("load", "save"), exposed as flower_practices_state_errors_total
        self.errors: dict[str, int] = {}
        self.writes = 0
        self._last: str | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one writer at a time (evaluations may overlap)

    # -- connection -------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None,
                                   check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("CREATE TABLE IF NOT EXISTS meta "
                             "(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                conn.execute("CREATE TABLE IF NOT EXISTS findings (practice TEXT NOT NULL, "
                             "queue TEXT, task TEXT, worker TEXT, data TEXT NOT NULL)")
                conn.execute("CREATE TABLE IF NOT EXISTS memory "
                             "(rule TEXT PRIMARY KEY, data TEXT NOT NULL)")
            except Exception:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    # -- load -------------------------------------------------------------------------
    def load(self) -> Snapshot:
        """The saved snapshot; empty when there is none or it cannot be read."""
        if not self.path.exists():
            return Snapshot()
        try:
            return self._read()
        except Exception as exc:
            self._count("load")
            self.close()
            aside = self._move_aside()
            log.error("state file %s cannot be read (%s: %s); moved aside to %s, "
                      "starting without saved findings", self.path, type(exc).__name__,
                      exc, aside or "(could not move it)")
            return Snapshot()

    def _read(self) -> Snapshot:
        conn = self._connect()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        version = meta.get("schema_version")
        if version is not None and version != str(SCHEMA_VERSION):
            raise ValueError(f"schema version {version}, expected {SCHEMA_VERSION}")
        if meta.get("broker") not in (None, self.broker):
            raise ValueError("the file belongs to another broker")
        findings = []
        for (data,) in conn.execute("SELECT data FROM findings"):
            item = json.loads(data)
            if not isinstance(item, dict):
                raise ValueError("a finding is not an object")
            findings.append(item)
        memory = {}
        for rule, data in conn.execute("SELECT rule, data FROM memory"):
            memory[rule] = json.loads(data)
        saved_at = float(meta.get("saved_at", 0.0))
        return Snapshot(findings=findings, memory=memory, saved_at=saved_at)

    def _move_aside(self) -> Path | None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
        except OSError:
            return None
        for suffix in ("-wal", "-shm"):
            extra = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(OSError):
                os.replace(extra, aside.with_name(aside.name + suffix))
        return aside

    # -- save -------------------------------------------------------------------------
    def save(self, snapshot: Snapshot) -> bool:
        """Write ``snapshot`` if it differs from the last one written; never raises."""
        with self._lock:
            return self._save(snapshot)

    def _save(self, snapshot: Snapshot) -> bool:
        rows = [(f.get("practice"), f.get("queue"), f.get("task"), f.get("worker"),
                 json.dumps(f, sort_keys=True, default=str)) for f in snapshot.findings]
        mem = [(rule, json.dumps(data, sort_keys=True, default=str))
               for rule, data in sorted(snapshot.memory.items())]
        fingerprint = json.dumps([sorted(r[4] for r in rows), mem])
        if fingerprint == self._last:
            return False
        try:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM findings")
                conn.execute("DELETE FROM memory")
                conn.executemany("INSERT INTO findings VALUES (?, ?, ?, ?, ?)", rows)
                conn.executemany("INSERT INTO memory VALUES (?, ?)", mem)
                conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION)), ("broker", self.broker),
                    ("saved_at", repr(snapshot.saved_at))])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            if self._count("save") == 1:
                log.error("cannot write state file %s (%s: %s); findings will not survive "
                          "a restart until it works again (counted in "
                          "flower_practices_state_errors_total, logged once)",
                          self.path, type(exc).__name__, exc)
            self.close()
            return False
        self._last = fingerprint
        self.writes += 1
        return True

    def _count(self, kind: str) -> int:
        n = self.errors.get(kind, 0) + 1
        self.errors[kind] = n
        return n


def open_store(state_dir: str | None, broker_url: str) -> StateStore | None:
    """A store in ``state_dir``; None when persistence is off (None, ``''``, ``none``)."""
    if state_dir is None or state_dir.strip().lower() in DISABLED:
        return None
    return StateStore(state_dir, broker_url)
