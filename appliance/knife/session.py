"""One signed connection to the server for a CLI command: credentials in, JSON out.

Errors a command cannot recover from are raised as `CliError` (message + exit status); the
dispatcher in ``knife.cli`` prints them as knife does (``ERROR: …``) and exits with the status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from appliance import signedhttp
from appliance.core.httptext import error_text, http_error
from appliance.core.keys import KeyFormatError, load_private_pem
from appliance.tlstrust import EXIT_UNTRUSTED, TlsOptions

__all__ = ["JSON", "Api", "ApiError", "CliError", "Credentials", "error_text"]

EXIT_ERROR = 100  # knife's status for any uncaught error (HTTP, network, bad option value)
JSON = signedhttp.JSON


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ApiError(CliError):
    """The server answered with an error status; ``message`` is the server's own text."""

    def __init__(self, status: int, body: Any, method: str, path: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{method} {path}: {http_error(status, body)}")


@dataclass(frozen=True)
class Credentials:
    server_url: str  # scheme://host:port, without /organizations/ORG
    org: str | None
    user: str
    key_path: Path
    source: str = "defaults"  # where they came from, named in error messages
    key_pem: str | None = None  # an inline key (``client_key`` PEM in ~/.chef/credentials)
    tls: TlsOptions = TlsOptions()  # Chef's SSL settings, for an https server URL


class Api:
    def __init__(self, creds: Credentials, *, timeout: float = 30.0) -> None:
        self.creds = creds
        self.timeout = timeout
        self._key: RSAPrivateKey | None = None

    @property
    def key(self) -> RSAPrivateKey:
        if self._key is None:
            path = self.creds.key_path
            try:
                pem = self.creds.key_pem
                self._key = load_private_pem(path.read_bytes() if pem is None else pem)
            except OSError as exc:
                raise CliError(
                    f"cannot read the key {path} ({self.creds.source}): {exc.strerror}"
                ) from None
            except KeyFormatError as exc:
                raise CliError(f"{path} is not a usable private key: {exc}") from None
        return self._key

    @property
    def org(self) -> str:
        if not self.creds.org:
            raise CliError(
                f"no organization: the server URL {self.creds.server_url} ({self.creds.source}) "
                "has no /organizations/ORG part; give --org or a chef_server_url with it"
            )
        return self.creds.org

    def org_path(self, relative: str) -> str:
        """``pushy/jobs`` → ``/organizations/ORG/pushy/jobs`` (knife's relative paths)."""
        return f"/organizations/{self.org}/{relative.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        accept: str = JSON,
        headers: dict[str, str] | None = None,
    ) -> signedhttp.Reply:
        """Any reply, error statuses included; unreachable server → CliError."""
        raw = b"" if body is None else json.dumps(body).encode("utf-8")
        return self.request_bytes(method, path, raw, accept=accept, headers=headers)

    def request_bytes(
        self,
        method: str,
        path: str,
        raw: bytes,
        *,
        accept: str = JSON,
        headers: dict[str, str] | None = None,
    ) -> signedhttp.Reply:
        """`request` with the body as bytes, sent as they are."""
        try:
            return signedhttp.send(
                self.creds.server_url,
                method,
                path,
                raw,
                self.creds.user,
                self.key,
                accept=accept,
                headers=headers,
                timeout=self.timeout,
                tls=self.creds.tls,
            )
        except OSError as exc:
            raise unreachable_error(self.creds.server_url, exc) from None

    def call(self, method: str, path: str, body: Any = None, *, accept: str = JSON) -> Any:
        """The parsed body of a 2xx reply; any other status raises `ApiError`."""
        reply = self.request(method, path, body, accept=accept)
        if not 200 <= reply.status < 300:
            raise ApiError(reply.status, reply.body(), method, path)
        return reply.body() if accept == JSON else reply.data

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.call("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.call("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.call("DELETE", path, **kw)

    def stream(
        self, path: str, *, last_event_id: str | None = None, timeout: float | None = None
    ) -> signedhttp.Stream:
        """An open SSE stream; an error status raises `ApiError`, no server `CliError`."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else None
        try:
            got = signedhttp.open_stream(
                self.creds.server_url,
                path,
                self.creds.user,
                self.key,
                headers=headers,
                timeout=self.timeout if timeout is None else timeout,
                tls=self.creds.tls,
            )
        except OSError as exc:
            raise unreachable_error(self.creds.server_url, exc) from None
        if isinstance(got, signedhttp.Reply):
            raise ApiError(got.status, got.body(), "GET", path)
        return got


def _reason(exc: OSError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or exc)


def unreachable_error(url: str, exc: OSError) -> CliError:
    """A server that could not be reached, or whose certificate is refused (its own message
    and exit status, `tlstrust.EXIT_UNTRUSTED`)."""
    if isinstance(exc, signedhttp.CertificateRefused):
        return CliError(str(exc), EXIT_UNTRUSTED)
    return CliError(f"cannot reach {url}: {_reason(exc)}")
