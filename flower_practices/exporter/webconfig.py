"""The Prometheus exporter web configuration file (``--web-config-file``): basic auth and TLS.

The same YAML file every Prometheus exporter reads (prometheus/exporter-toolkit)::

    tls_server_config:
      cert_file: server.crt            # relative paths: from the file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, needs client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12               # optional: TLS10..TLS13
    basic_auth_users:
      prometheus: $2y$10$...           # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

Validated completely at start-up: an unknown key, a hash that is not bcrypt or a certificate
that does not load is a :class:`WebConfigError` naming the key. The keys of exporter-toolkit
that this exporter does not implement (``http_server_config``, ``cipher_suites`` ...) are
refused rather than ignored, so a file never means less than it says.

:class:`BasicAuth` checks ``Authorization`` headers. bcrypt is slow on purpose (tens of ms
per check), so checks run in a worker thread and a successful check is remembered by the
SHA-256 of the credentials: a scrape with known credentials costs one hash, not a bcrypt.
Unknown users are checked against a dummy hash so response time does not reveal user names.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import re
import ssl
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

TOP_KEYS = {"tls_server_config", "basic_auth_users"}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version"}
#: exporter-toolkit keys we refuse rather than silently ignore
UNSUPPORTED = {"http_server_config", "rate_limit", "cert", "key", "client_ca",
               "cipher_suites", "curve_preferences", "prefer_server_cipher_suites",
               "client_allowed_sans"}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3,
}
#: remembered successful credentials (by SHA-256); a few users, a few password rotations
CACHE_SIZE = 64
#: bcrypt checks waiting for the worker thread; beyond it a request gets 503 at once
MAX_PENDING_CHECKS = 16


class WebConfigError(ValueError):
    """The web configuration file is invalid; the message is one line naming the key."""


@dataclass
class WebConfig:
    """A validated web configuration: users (name -> bcrypt hash) and an SSL context."""

    users: dict[str, bytes] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = None

    @property
    def auth_required(self) -> bool:
        return bool(self.users)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"


def load_web_config(path: str | Path) -> WebConfig:
    """Read and validate ``path``; raise :class:`WebConfigError` with a one-line reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise WebConfigError(f"cannot read web config file {path}: {reason}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise WebConfigError(f"{path}: not valid YAML{where}") from exc
    return web_config_from_mapping(data if data is not None else {}, path)


def web_config_from_mapping(data: Any, path: Path) -> WebConfig:
    if not isinstance(data, dict):
        raise WebConfigError(f"{path}: expected a mapping at the top level")
    _check_keys(path, "", data, TOP_KEYS)
    config = WebConfig()
    users = data.get("basic_auth_users")
    if users is not None:
        if not isinstance(users, dict):
            raise WebConfigError(f"{path}: basic_auth_users must map user names to hashes")
        for user, hashed in users.items():
            if not isinstance(user, str) or not user or ":" in user:
                raise WebConfigError(f"{path}: basic_auth_users: invalid user name {user!r}")
            if not isinstance(hashed, str) or not _is_bcrypt(hashed):
                raise WebConfigError(
                    f"{path}: basic_auth_users.{user}: not a bcrypt hash ($2a$/$2b$/$2y$)")
            config.users[user] = hashed.encode("ascii")
    tls = data.get("tls_server_config")
    if tls is not None:
        if not isinstance(tls, dict):
            raise WebConfigError(f"{path}: tls_server_config must be a mapping")
        _check_keys(path, "tls_server_config.", tls, TLS_KEYS)
        config.ssl_context = _ssl_context(path, tls)
    return config


def _check_keys(path: Path, prefix: str, data: dict, known: set[str]) -> None:
    for key in data:
        if key in UNSUPPORTED:
            raise WebConfigError(f"{path}: {prefix}{key} is not supported by this exporter")
        if key not in known:
            raise WebConfigError(f"{path}: unknown key {prefix}{key}; known: {sorted(known)}")


_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def _is_bcrypt(hashed: str) -> bool:
    return _BCRYPT.fullmatch(hashed) is not None


def _file(path: Path, tls: dict, key: str) -> str:
    value = tls.get(key)
    if not isinstance(value, str) or not value:
        raise WebConfigError(f"{path}: tls_server_config.{key} must be a file path")
    resolved = path.parent / value  # an absolute value stays absolute
    if not resolved.is_file():
        raise WebConfigError(f"{path}: tls_server_config.{key}: no such file {resolved}")
    return str(resolved)


def _ssl_context(path: Path, tls: dict) -> ssl.SSLContext:
    cert, key = _file(path, tls, "cert_file"), _file(path, tls, "key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise WebConfigError(f"{path}: tls_server_config: cannot load cert_file/key_file: "
                             f"{getattr(exc, 'reason', None) or exc}") from exc
    for bound in ("min_version", "max_version"):
        value = tls.get(bound)
        if value is not None:
            if value not in TLS_VERSIONS:
                raise WebConfigError(f"{path}: tls_server_config.{bound} must be one of "
                                     f"{sorted(TLS_VERSIONS)}, got {value!r}")
            setattr(context, bound, TLS_VERSIONS[value])
    if "min_version" not in tls:
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # exporter-toolkit's default
    auth_type = tls.get("client_auth_type", "NoClientCert")
    if auth_type not in CLIENT_AUTH:
        raise WebConfigError(f"{path}: tls_server_config.client_auth_type must be one of "
                             f"{sorted(CLIENT_AUTH)}, got {auth_type!r}")
    if "client_ca_file" in tls:
        try:
            context.load_verify_locations(_file(path, tls, "client_ca_file"))
        except (ssl.SSLError, OSError) as exc:
            raise WebConfigError(f"{path}: tls_server_config.client_ca_file: cannot load: "
                                 f"{getattr(exc, 'reason', None) or exc}") from exc
    elif "Verify" in auth_type:
        raise WebConfigError(f"{path}: tls_server_config.client_auth_type {auth_type} "
                             "needs client_ca_file")
    context.verify_mode = CLIENT_AUTH[auth_type]
    return context


@functools.cache
def _dummy_hash() -> bytes:
    return bcrypt.hashpw(b"flower-practices: no such user", bcrypt.gensalt(rounds=10))


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes, cheaply when repeated."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix="flower-practices-bcrypt")
        self._pending = 0

    @staticmethod
    def parse(header: str) -> tuple[str, str] | None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded or len(encoded) > 4096:
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else None

    async def check(self, header: str) -> bool | None:
        """True/False for valid/invalid credentials; None when too many checks are queued."""
        parsed = self.parse(header)
        if parsed is None:
            return False
        user, password = parsed
        digest = hashlib.sha256(f"{user}\0{password}".encode("utf-8", "surrogatepass")).digest()
        if digest in self._ok:
            self._ok.move_to_end(digest)
            return True
        if self._pending >= MAX_PENDING_CHECKS:
            return None
        self._pending += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._verify, user, password)
        finally:
            self._pending -= 1
        if ok:
            self._ok[digest] = None
            while len(self._ok) > CACHE_SIZE:
                self._ok.popitem(last=False)
        return ok

    def _verify(self, user: str, password: str) -> bool:
        hashed = self.users.get(user)
        try:
            secret = password.encode("utf-8")
        except UnicodeEncodeError:
            return False
        if hashed is None:
            bcrypt.checkpw(secret, _dummy_hash())  # same cost as a real check
            return False
        return bcrypt.checkpw(secret, hashed)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
