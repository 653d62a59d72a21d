"""HTTPS on the API port (``api_tls_cert`` / ``api_tls_key``): the pair checked at start with a
message an operator can act on, served through hypercorn's TLS, and loaded again on reload.

hypercorn builds its SSL context once, when it starts listening; `ServerTls` builds that
context itself and hands it over (`hypercorn_config`), so that a reload can load a renewed
certificate into the same context: new connections get it, open ones keep theirs. A pair that
does not check out at reload is refused and the running certificate stays.

ALPN offers HTTP/1.1 only: the SSE feeds, the websocket and the stall guards
(``appliance.server.stalls``) are built and tested on HTTP/1.1, as over plain HTTP.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

if TYPE_CHECKING:
    from hypercorn.config import Config

    from appliance.core.settings import Settings

log = logging.getLogger("pushy.server")

EXPIRY_WARNING_DAYS = 30
MAX_PEM_BYTES = 1024 * 1024


class TlsSetupError(ValueError):
    """The certificate pair cannot be served; ``str()`` says which file and why."""


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_PEM_BYTES)
    except OSError as exc:
        raise TlsSetupError(f"setting {key!r}: cannot read {path}: {exc.strerror}") from None


def check_pair(cert_path: str | None, key_path: str | None) -> list[str]:
    """Raise `TlsSetupError` unless both files are set, readable, PEM, unencrypted and match;
    returns warnings (a certificate expired or expiring soon)."""
    if cert_path is None and key_path is None:
        return []
    if cert_path is None or key_path is None:
        missing = "api_tls_cert" if cert_path is None else "api_tls_key"
        raise TlsSetupError(
            f"settings 'api_tls_cert' and 'api_tls_key' go together: {missing!r} is missing"
        )
    cert_data, key_data = _read(cert_path, "api_tls_cert"), _read(key_path, "api_tls_key")
    try:
        chain = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        raise TlsSetupError(
            f"setting 'api_tls_cert': {cert_path} holds no PEM certificate "
            "(-----BEGIN CERTIFICATE-----)"
        ) from None
    try:
        private = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise TlsSetupError(
            f"setting 'api_tls_key': {key_path} is encrypted; the server needs it unencrypted "
            "(openssl pkey -in KEY -out KEY.plain), readable by the server only"
        ) from None
    except ValueError as exc:
        raise TlsSetupError(
            f"setting 'api_tls_key': {key_path} holds no usable PEM private key ({exc})"
        ) from None
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*spki) != private.public_key().public_bytes(*spki):
        raise TlsSetupError(
            f"setting 'api_tls_key': {key_path} is not the key of the certificate in "
            f"{cert_path} (the first certificate of that file must be the server's own)"
        )
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(f"OpenSSL refuses {cert_path} with {key_path}: {exc}") from None
    return _expiry_warnings(chain[0], cert_path)


def _expiry_warnings(cert: x509.Certificate, path: str) -> list[str]:
    now = datetime.datetime.now(datetime.UTC)
    ends = cert.not_valid_after_utc
    if ends <= now:
        return [f"the API certificate {path} expired on {ends:%Y-%m-%d}: clients refuse it"]
    if ends - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        return [f"the API certificate {path} expires on {ends:%Y-%m-%d}; renew it and reload"]
    return []


class ServerTls:
    """The API port's SSL context, built once and reloaded in place."""

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path, self.key_path = cert_path, key_path
        self.context: ssl.SSLContext | None = None  # made by hypercorn's config, kept here

    def reload(self, cert_path: str, key_path: str) -> list[str]:
        """Load a (possibly renewed) pair into the running context; `TlsSetupError` leaves
        the running certificate in place."""
        warnings = check_pair(cert_path, key_path)
        if self.context is not None:
            self.context.load_cert_chain(cert_path, key_path)
        self.cert_path, self.key_path = cert_path, key_path
        return warnings


def server_tls(settings: Settings) -> ServerTls | None:
    """The running HTTPS set-up, or None for plain HTTP."""
    if settings.api_tls_cert is None or settings.api_tls_key is None:
        return None
    return ServerTls(settings.api_tls_cert, settings.api_tls_key)


def hypercorn_config(bind: str, tls: ServerTls | None) -> Config:
    """hypercorn's config for the API port: plain HTTP, or HTTPS with ``tls``'s context."""
    from hypercorn.config import Config

    class _TlsConfig(Config):
        def create_ssl_context(self) -> ssl.SSLContext | None:
            if tls is None:
                return None
            if tls.context is None:
                tls.context = super().create_ssl_context()
            return tls.context

    config = _TlsConfig()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("pushy.hypercorn")
    if tls is not None:
        config.certfile, config.keyfile = tls.cert_path, tls.key_path
        config.alpn_protocols = ["http/1.1"]
    return config
