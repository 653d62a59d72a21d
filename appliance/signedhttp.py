"""Chef-signed HTTP requests (protocol 1.3): the one client of the node agent, ``pushy raw``,
the demo, the operator CLI and the benchmarks.

One pooled ``httpx.Client`` per server origin, shared by every thread of the process, keeps
connections alive between requests (a benchmark makes thousands; the CLI's follow makes one
GET per event burst). It is blocking: callers inside trio run it in a worker thread. A 200
reply to a streaming GET (SSE) comes back open as a `Stream`.

Errors: an HTTP error status is a `Reply` like any other; a server that cannot be reached (or
drops the connection) raises `Unreachable`, an ``OSError`` whose text is the one urllib gave,
which the client's log line and docs/troubleshooting.md quote. An HTTPS server whose
certificate is refused (``appliance.tlstrust``: Chef's ``ssl_verify_mode``,
``verify_api_cert``, ``trusted_certs_dir``) raises `CertificateRefused`, an `Unreachable` whose
text names the URL, the reason and the fix.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from appliance.core import chefauth
from appliance.core.httptext import http_error
from appliance.core.keys import load_private_pem
from appliance.sse import SseEvent, SseParser
from appliance.tlstrust import (
    TlsOptions,
    client_context,
    dir_signature,
    untrusted_message,
    verify_error,
)

JSON = "application/json"
DEFAULT_TIMEOUT = 30.0
KEEPALIVE_SECONDS = 4.0  # under hypercorn's 5 s, so that we rarely reuse a closing connection
MAX_IDLE_CONNECTIONS = 64  # per server; the load generator runs tens of threads
_RETRY_ANY = (httpx.RemoteProtocolError, httpx.WriteError)  # the server never answered
_RETRY_IDEMPOTENT = (httpx.ReadError,)  # reset: maybe answered, so only where repeating is safe
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


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


class Unreachable(OSError):
    """The server could not be reached or dropped the connection. ``reason`` is the socket
    error (or httpx's text); ``str()`` is what urllib printed (``<urlopen error ...>`` when
    nothing could be sent)."""

    def __init__(self, reason: OSError | str, *, before_sending: bool) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.before_sending = before_sending
        if isinstance(reason, OSError):
            self.errno, self.strerror = reason.errno, reason.strerror

    def __str__(self) -> str:
        return f"<urlopen error {self.reason}>" if self.before_sending else str(self.reason)


class CertificateRefused(Unreachable):
    """The HTTPS server's certificate is not trusted: ``str()`` says which server, why and what
    to do (`tlstrust.untrusted_message`)."""

    def __init__(self, url: str, error: ssl.SSLCertVerificationError, tls: TlsOptions) -> None:
        super().__init__(untrusted_message(url, error, tls), before_sending=True)
        self.url = url
        self.error = error

    def __str__(self) -> str:
        return str(self.reason)


class HttpError(Exception):
    """A status the caller did not expect (`SignedClient.json`)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(http_error(status, body))
        self.status = status
        self.body = body


def unreachable(exc: httpx.TransportError, tls: TlsOptions | None = None) -> Unreachable:
    """httpx's transport error as `Unreachable`, keeping the socket error underneath (a refused
    certificate: `CertificateRefused`)."""
    refused = verify_error(exc)
    if refused is not None:
        try:
            url = exc.request.url
            origin = f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"
        except RuntimeError:  # no request attached
            origin = "the server"
        return CertificateRefused(origin, refused, tls or TlsOptions())
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    before = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.WriteError)
    if isinstance(cause, OSError):
        return Unreachable(cause, before_sending=before)
    return Unreachable(_with_https_hint(exc), before_sending=before)


def _with_https_hint(exc: httpx.TransportError) -> str:
    """An HTTPS port hangs up on a plain HTTP request without a word: say what to try."""
    try:
        url = exc.request.url
    except RuntimeError:  # no request attached
        return str(exc)
    if isinstance(exc, httpx.RemoteProtocolError) and url.scheme == "http":
        https = url.copy_with(scheme="https", path="/", query=None)
        return f"{str(exc).rstrip('.')}; is it an HTTPS port? Try {str(https).rstrip('/')}"
    return str(exc)


def signed_headers(
    key: RSAPrivateKey, user: str, method: str, path: str, body: bytes, at: float | None = None
) -> dict[str, str]:
    """X-Ops headers for ``path`` (the query string is not signed, as in mixlib), signed now
    or as of the epoch second ``at``."""
    return chefauth.sign_request(
        key=key,
        user_id=user,
        method=method,
        path=path.split("?", 1)[0],
        body=body,
        timestamp=chefauth.format_timestamp(time.time() if at is None else at),
    )


def request_headers(
    key: RSAPrivateKey,
    user: str,
    method: str,
    path: str,
    body: bytes,
    *,
    accept: str = JSON,
    headers: dict[str, str] | None = None,
    at: float | None = None,
) -> dict[str, str]:
    """Every header of a signed request: the signature, Accept, the body's type, extras."""
    all_headers = signed_headers(key, user, method, path, body, at)
    all_headers["Accept"] = accept
    all_headers["Accept-Encoding"] = "identity"  # replies byte for byte as the server sent them
    if body:
        all_headers["Content-Type"] = JSON
    all_headers.update(headers or {})
    return all_headers


def content_type(value: str | None) -> str:
    """The media type alone, lower case; ``text/plain`` when absent or malformed (urllib's
    ``get_content_type`` rule, which `Reply.body` relies on)."""
    media = (value or "").split(";", 1)[0].strip().lower()
    return media if media.count("/") == 1 else "text/plain"


def _reply(response: httpx.Response) -> Reply:
    raw = {k.decode("latin-1"): v.decode("latin-1") for k, v in response.headers.raw}
    return Reply(
        response.status_code,
        content_type(response.headers.get("content-type")),
        response.content,
        raw,
    )


class Stream:
    """An open streaming reply: `chunks` as they arrive, or `events` through an SSE parser.
    `interrupt` may be called from another thread to wake a blocked read."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = response.headers

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives; a dropped or silent connection raises `Unreachable`."""
        try:
            yield from self.response.iter_raw()
        except httpx.TransportError as exc:
            raise unreachable(exc) from None

    def events(self, parser: SseParser) -> Iterator[SseEvent]:
        """The SSE events of the body (ValueError on a line over the parser's limit)."""
        for chunk in self.chunks():
            yield from parser.feed_bytes(chunk)

    def interrupt(self) -> None:
        """Shut the socket down: a read blocked in another thread returns at once."""
        stream = self.response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(httpx.HTTPError, OSError):
            self.response.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SignedClient:
    """Signed requests to one server over pooled keep-alive connections; thread-safe.

    ``base_url`` may carry a path prefix (``http://host/api``): request paths are appended to
    it and the whole path is signed. ``tls``: Chef's SSL settings for an ``https`` URL."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,  # tests: httpx.MockTransport
        tls: TlsOptions | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.tls = tls or TlsOptions()
        https = parts.scheme.lower() == "https"
        self._http = httpx.Client(
            verify=client_context(self.tls) if https else True,
            timeout=timeout,
            follow_redirects=False,
            transport=transport,
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=MAX_IDLE_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_SECONDS,
            ),
        )

    def close(self) -> None:
        self._http.close()

    def _request(
        self,
        method: str,
        path: str,
        body: bytes,
        user: str,
        key: RSAPrivateKey,
        accept: str,
        headers: dict[str, str] | None,
        timeout: float | None,
    ) -> httpx.Request:
        full = self.prefix + path
        return self._built(
            method,
            path,
            body,
            request_headers(key, user, method, full, body, accept=accept, headers=headers),
            timeout,
        )

    def _built(
        self, method: str, path: str, body: bytes, headers: dict[str, str], timeout: float | None
    ) -> httpx.Request:
        return self._http.build_request(
            method,
            self.origin + self.prefix + path,
            content=body or None,
            headers=headers,
            timeout=self.timeout if timeout is None else timeout,
        )

    def presign(
        self, method: str, path: str, body: bytes, user: str, key: RSAPrivateKey
    ) -> dict[str, str]:
        """Every header of the request, signed now: a load generator signs each request once
        and sends it with `send_presigned` for as long as the server's clock skew allows
        (``max_time_skew``, 15 minutes by default), instead of paying an RSA signature each."""
        return request_headers(key, user, method, self.prefix + path, body)

    def send_presigned(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Reply:
        """`send` with the headers of `presign` (the same retry of a dropped connection)."""
        return self._send(lambda: self._built(method, path, body, headers, None), method)

    def send(
        self,
        method: str,
        path: str,
        body: bytes,
        user: str,
        key: RSAPrivateKey,
        *,
        accept: str = JSON,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """One signed request; HTTP errors are returned as replies. Raises `Unreachable`.
        A connection the server dropped meanwhile is retried once on a fresh one."""
        return self._send(
            lambda: self._request(method, path, body, user, key, accept, headers, timeout), method
        )

    def _send(self, build: Callable[[], httpx.Request], method: str) -> Reply:
        for attempt in (1, 2):
            request = build()
            try:
                return _reply(self._http.send(request))
            except httpx.TransportError as exc:
                retry = isinstance(exc, _RETRY_ANY) or (
                    isinstance(exc, _RETRY_IDEMPOTENT) and method in _IDEMPOTENT
                )
                if attempt == 2 or not retry:
                    raise unreachable(exc, self.tls) from None
        raise AssertionError("unreachable")

    def open_stream(
        self,
        path: str,
        user: str,
        key: RSAPrivateKey,
        *,
        accept: str = "text/event-stream",
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Stream | Reply:
        """A signed GET whose 200 reply is returned open (the caller reads and closes it); any
        other status comes back as a `Reply`. Raises `Unreachable`."""
        request = self._request("GET", path, b"", user, key, accept, headers, timeout)
        try:
            response = self._http.send(request, stream=True)
            if response.status_code != 200:
                try:
                    response.read()
                finally:
                    response.close()
                return _reply(response)
        except httpx.TransportError as exc:
            raise unreachable(exc, self.tls) from None
        return Stream(response)

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
        """A JSON request; the parsed reply (text if it does not parse), `HttpError` unless
        the status is in ``ok``."""
        raw = b"" if body is None else orjson.dumps(body)
        reply = self.send(method, path, raw, user, key)
        try:
            parsed = orjson.loads(reply.data) if reply.data else None
        except orjson.JSONDecodeError:
            parsed = reply.data.decode("utf-8", "replace")
        if reply.status not in ok:
            raise HttpError(reply.status, parsed)
        return parsed


PRESIGNED_MAX_AGE = 600.0  # under the server's max_time_skew (900 s by default), with margin


class Presigner:
    """Signed headers of bodyless requests, kept and sent again while younger than
    ``max_age`` seconds. A load generator or a simulated fleet on the server's own machine
    would otherwise spend an RSA signature (~1 ms of CPU) per request on the cores it is
    measuring; the server sees the same bytes a client signing each time would send, only
    with an older (still valid) timestamp (a node's own config fetch sent again is a replay to
    the server: it gets the session key it was given, ``core.servedfetches``). Thread-safe: a race signs twice, nothing worse."""

    def __init__(self, client: SignedClient, max_age: float = PRESIGNED_MAX_AGE) -> None:
        self.client = client
        self.max_age = max_age
        self.signatures = 0  # how many were made, for the benchmarks' reports
        self._signed: dict[tuple[str, str, str], tuple[float, dict[str, str]]] = {}

    def headers(self, method: str, path: str, user: str, key: RSAPrivateKey) -> dict[str, str]:
        """The kept headers for the request, signed anew when missing or too old."""
        now = time.monotonic()
        kept = self._signed.get((user, method, path))
        if kept is None or now - kept[0] > self.max_age:
            kept = (now, self.client.presign(method, path, b"", user, key))
            self._signed[(user, method, path)] = kept
            self.signatures += 1
        return kept[1]

    def send(self, method: str, path: str, user: str, key: RSAPrivateKey) -> Reply:
        """`SignedClient.send` of a bodyless request, with kept headers."""
        return self.client.send_presigned(method, path, b"", self.headers(method, path, user, key))


_clients: dict[tuple[Any, ...], SignedClient] = {}
_clients_lock = threading.Lock()
MAX_CLIENTS = 32  # servers one process talks to (tests start many); the oldest is dropped


def client_for(base_url: str, tls: TlsOptions | None = None) -> SignedClient:
    """The process's shared client for ``base_url`` (each request says its own timeout). For an
    HTTPS server, a certificate added to ``trusted_certs_dir`` meanwhile gives a new client: a
    node client told to run ``pushy ssl fetch`` needs no restart."""
    url = base_url.rstrip("/")
    key: tuple[Any, ...] = (url,)
    if url.lower().startswith("https:"):
        tls = tls or TlsOptions()
        key = (url, tls, dir_signature(tls.trusted_certs_dir))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if len(_clients) >= MAX_CLIENTS:  # dropped, not closed: a thread may be using it
                _clients.pop(next(iter(_clients)))
            client = _clients[key] = SignedClient(url, tls=tls)
        return client


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
    timeout: float = DEFAULT_TIMEOUT,
    tls: TlsOptions | None = None,
) -> Reply:
    """One signed request on the shared client; HTTP errors are returned as replies. Raises
    `Unreachable` (an OSError) when the server cannot be reached."""
    return client_for(base_url, tls).send(
        method, path, body, user, key, accept=accept, headers=headers, timeout=timeout
    )


def open_stream(
    base_url: str,
    path: str,
    user: str,
    key: RSAPrivateKey,
    *,
    accept: str = "text/event-stream",
    headers: dict[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    tls: TlsOptions | None = None,
) -> Stream | Reply:
    """`SignedClient.open_stream` on the shared client."""
    return client_for(base_url, tls).open_stream(
        path, user, key, accept=accept, headers=headers, timeout=timeout
    )


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
    timeout: float = DEFAULT_TIMEOUT,
    tls: TlsOptions | None = None,
) -> tuple[int, Any]:
    """One signed JSON request; returns (status, parsed JSON or text). Raises `Unreachable`
    (an OSError) if unreachable."""
    raw = b"" if body is None else json.dumps(body).encode("utf-8")
    reply = send(
        url,
        method,
        path,
        raw,
        user,
        _private_key(key_pem),
        accept=accept,
        timeout=timeout,
        tls=tls,
    )
    return reply.status, reply.body()
