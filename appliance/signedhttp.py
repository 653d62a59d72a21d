"""Chef-signed HTTP requests (protocol 1.3), shared by the node client, ``pushy raw``, the demo
and the operator CLI: one place that signs, sends and reads a reply.

Plain ``urllib`` (blocking): callers inside trio run it in a worker thread. A streaming reply
(SSE) is returned open so that the caller can read it line by line.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from http.client import HTTPResponse
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from appliance.core import chefauth
from appliance.core.keys import load_private_pem

JSON = "application/json"


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    data: bytes
    headers: dict[str, str]

    def body(self) -> Any:
        """Parsed JSON for a JSON reply (raw text if it does not parse), text otherwise."""
        if self.content_type == JSON:
            try:
                return json.loads(self.data)
            except ValueError:
                pass
        return self.data.decode("utf-8", "replace")


def signed_headers(
    key: RSAPrivateKey, user: str, method: str, path: str, body: bytes
) -> dict[str, str]:
    """X-Ops headers for ``path`` (the query string is not signed, as in mixlib)."""
    return chefauth.sign_request(
        key=key,
        user_id=user,
        method=method,
        path=path.split("?", 1)[0],
        body=body,
        timestamp=chefauth.format_timestamp(time.time()),
    )


def _build(
    base_url: str,
    method: str,
    path: str,
    body: bytes,
    user: str,
    key: RSAPrivateKey,
    accept: str,
    headers: dict[str, str] | None,
) -> urllib.request.Request:
    all_headers = signed_headers(key, user, method, path, body)
    all_headers["Accept"] = accept
    if body:
        all_headers["Content-Type"] = JSON
    all_headers.update(headers or {})
    return urllib.request.Request(
        base_url.rstrip("/") + path, data=body or None, method=method, headers=all_headers
    )


def send(
    base_url: str,
    method: str,
    path: str,
    body: bytes,
    user: str,
    key: RSAPrivateKey,
    *,
    accept: str = JSON,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Reply:
    """One signed request; HTTP errors are returned as replies. Raises OSError (including
    ``urllib.error.URLError``) when the server cannot be reached."""
    request = _build(base_url, method, path, body, user, key, accept, headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(
                response.status,
                response.headers.get_content_type(),
                response.read(),
                dict(response.headers.items()),
            )
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(
                exc.code, exc.headers.get_content_type(), exc.read(), dict(exc.headers.items())
            )


def open_stream(
    base_url: str,
    path: str,
    user: str,
    key: RSAPrivateKey,
    *,
    accept: str = "text/event-stream",
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> HTTPResponse | Reply:
    """A signed GET whose 200 reply is returned open (the caller reads and closes it); any
    other status comes back as a `Reply`. Raises OSError when the server cannot be reached."""
    request = _build(base_url, "GET", path, b"", user, key, accept, headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(
                exc.code, exc.headers.get_content_type(), exc.read(), dict(exc.headers.items())
            )
    if response.status != 200:
        with response:
            return Reply(
                response.status,
                response.headers.get_content_type(),
                response.read(),
                dict(response.headers.items()),
            )
    return response


@lru_cache(maxsize=16)
def _private_key(pem: str) -> RSAPrivateKey:
    """Parsed once per key: OpenSSL's RSA consistency check costs ~40 ms on every load."""
    return load_private_pem(pem)


def signed_request(
    url: str,
    method: str,
    path: str,
    body: Any,
    user: str,
    key_pem: str,
    *,
    accept: str = JSON,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    """One signed JSON request; returns (status, parsed JSON or text). Raises OSError if
    unreachable."""
    raw = b"" if body is None else json.dumps(body).encode("utf-8")
    reply = send(
        url, method, path, raw, user, _private_key(key_pem), accept=accept, timeout=timeout
    )
    return reply.status, reply.body()
