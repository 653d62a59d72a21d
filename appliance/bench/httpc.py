"""Chef-signed HTTP with keep-alive connections, one per thread, for bulk work and load.

``signedhttp`` opens a connection per request (and re-parses the key each time, ~40 ms for a
validated 2048-bit key); a benchmark that makes thousands of requests keeps one connection per
thread and a parsed key instead. The signing is the same (``signedhttp.signed_headers``).
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from appliance.signedhttp import signed_headers

JSON = "application/json"


def fast_private_key(pem: str | bytes) -> RSAPrivateKey:
    """A key we generated ourselves: skip OpenSSL's (expensive) RSA consistency check."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    key = serialization.load_pem_private_key(data, None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, RSAPrivateKey)
    return key


class HttpError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {str(body)[:300]}")
        self.status = status
        self.body = body


class KeepAlive:
    """Signed requests to one server; each thread reuses its own HTTP/1.1 connection."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(
        self,
        method: str,
        path: str,
        body: Any,
        user: str,
        key: RSAPrivateKey,
        *,
        accept: str = JSON,
    ) -> tuple[int, bytes]:
        """(status, raw body); one retry on a connection the server closed meanwhile."""
        raw = b"" if body is None else orjson.dumps(body)
        full = self.prefix + path
        headers = signed_headers(key, user, method, full, raw)
        headers["Accept"] = accept
        headers["Connection"] = "keep-alive"
        if raw:
            headers["Content-Type"] = JSON
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, full, body=raw or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                return response.status, data
            except (http.client.HTTPException, ConnectionError) as exc:
                self.close()
                if attempt == 2:
                    raise OSError(f"{method} {full}: {exc!r}") from exc
            except OSError:
                self.close()
                raise
        raise AssertionError("unreachable")

    def json(
        self,
        method: str,
        path: str,
        body: Any,
        user: str,
        key: RSAPrivateKey,
        *,
        ok: tuple[int, ...] = (200, 201),
    ) -> Any:
        status, data = self.request(method, path, body, user, key)
        try:
            parsed = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            parsed = data.decode("utf-8", "replace")
        if status not in ok:
            raise HttpError(status, parsed)
        return parsed
