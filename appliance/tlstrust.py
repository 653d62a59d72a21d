"""Which HTTPS servers the CLI and the node client trust, as Chef decides it, and what a user is
told when a server's certificate is refused. One place for both, so that ``pushy job start``,
``pushy client`` and ``pushy ssl check`` never disagree about a server.

Chef's rules (Chef::HTTP::DefaultSSLPolicy and APISSLPolicy, which knife and the push client
use for API requests):

- ``ssl_verify_mode :verify_peer`` (the default) verifies the certificate chain and the host
  name; ``:verify_none`` does not, unless ``verify_api_cert true``, which verifies API
  requests anyway;
- trusted: the system's CA certificates (certifi's bundle when the system has none, as Chef's
  packages ship their own), ``ssl_ca_file``, ``ssl_ca_path``, and every ``*.crt`` / ``*.pem``
  file in ``trusted_certs_dir`` (where ``pushy ssl fetch`` / ``knife ssl fetch`` put them).

A certificate stored in ``trusted_certs_dir`` is trusted by itself (OpenSSL's partial-chain
flag): a server's own self-signed or leaf certificate is enough, as users of ``knife ssl
fetch`` expect.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger("pushy.tls")

VERIFY_MODES = ("verify_peer", "verify_none")
CERT_SUFFIXES = (".crt", ".pem")
EXIT_UNTRUSTED = 101  # the CLI's status for a server certificate it refuses (docs/knife-users.md)

# OpenSSL's verify codes worth a sentence of their own (x509_vfy.h)
_SELF_SIGNED = {18, 19}  # DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_CERT_IN_CHAIN
_UNKNOWN_ISSUER = {2, 20, 21}  # UNABLE_TO_GET_ISSUER_CERT(_LOCALLY), UNABLE_TO_VERIFY_LEAF
_EXPIRED, _NOT_YET_VALID = 10, 9
_NAME_MISMATCH = {62, 64}  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH


@dataclass(frozen=True)
class TlsOptions:
    """Chef's SSL settings as a knife.rb or push-jobs-client.rb gives them."""

    verify_mode: str = "verify_peer"  # ssl_verify_mode, without the colon
    verify_api_cert: bool = False
    trusted_certs_dir: str | None = None
    ca_file: str | None = None  # ssl_ca_file
    ca_path: str | None = None  # ssl_ca_path

    @property
    def verifies(self) -> bool:
        """Whether API requests check the server's certificate (APISSLPolicy)."""
        return self.verify_mode != "verify_none" or self.verify_api_cert


def trusted_files(directory: str | None) -> list[Path]:
    """The certificate files of ``trusted_certs_dir`` (``*.crt``, ``*.pem``), sorted."""
    if not directory:
        return []
    try:
        entries = sorted(Path(directory).iterdir())
    except OSError:
        return []
    return [p for p in entries if p.suffix.lower() in CERT_SUFFIXES and p.is_file()]


def dir_signature(directory: str | None) -> tuple[tuple[str, int], ...]:
    """What changes when a certificate is added to or replaced in the directory."""
    out = []
    for path in trusted_files(directory):
        try:
            out.append((path.name, path.stat().st_mtime_ns))
        except OSError:
            continue
    return tuple(out)


def _system_store_present() -> bool:
    paths = ssl.get_default_verify_paths()
    if paths.cafile and os.path.isfile(paths.cafile):
        return True
    return bool(paths.capath and os.path.isdir(paths.capath) and os.listdir(paths.capath))


def trust_context(options: TlsOptions) -> ssl.SSLContext:
    """A verifying client context: the system store, Chef's CA settings and trusted_certs_dir
    (what ``knife ssl check`` checks against, whatever ``ssl_verify_mode`` says)."""
    return _trust_context(options, dir_signature(options.trusted_certs_dir))


@lru_cache(maxsize=16)
def _trust_context(options: TlsOptions, signature: tuple[tuple[str, int], ...]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not _system_store_present():
        import certifi

        context.load_verify_locations(cafile=certifi.where())
    if options.ca_file:
        _load(context, cafile=options.ca_file)
    if options.ca_path:
        _load(context, capath=options.ca_path)
    for path in trusted_files(options.trusted_certs_dir):
        _load(context, cafile=str(path))
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _load(context: ssl.SSLContext, **where: str) -> None:
    """One trusted source; an unreadable or invalid one is skipped with a warning, as OpenSSL
    skips an invalid file in Chef's trusted_certs_dir (``pushy ssl check`` lists them)."""
    try:
        context.load_verify_locations(**where)
    except (OSError, ssl.SSLError, ValueError) as exc:
        log.warning("ignoring %s: %s", next(iter(where.values())), _strip(exc))


def client_context(options: TlsOptions) -> ssl.SSLContext:
    """The context API requests use: `trust_context`, or none at all under ``:verify_none``
    (without ``verify_api_cert``)."""
    if options.verifies:
        return trust_context(options)
    return _unverified()


@lru_cache(maxsize=1)
def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _strip(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def verify_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate refusal under an HTTP library's error, if that is what it is."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def reason(error: ssl.SSLCertVerificationError) -> str:
    """OpenSSL's refusal in words: self-signed, unknown issuer, expired, wrong host name."""
    code = getattr(error, "verify_code", None)
    message = str(getattr(error, "verify_message", "") or error.reason or error)
    if code in _SELF_SIGNED:
        return "it is self-signed and not among the trusted certificates"
    if code in _UNKNOWN_ISSUER:
        return f"its issuer is not among the trusted certificates ({message})"
    if code == _EXPIRED:
        return "it has expired"
    if code == _NOT_YET_VALID:
        return "it is not valid yet (check this machine's clock)"
    if code in _NAME_MISMATCH:
        return f"it is not for this host name ({message.rstrip('.')})"
    return message


def name_mismatch(error: ssl.SSLCertVerificationError) -> bool:
    """The chain is trusted but names another host (or address)."""
    return getattr(error, "verify_code", None) in _NAME_MISMATCH


def untrusted_message(url: str, error: ssl.SSLCertVerificationError, options: TlsOptions) -> str:
    """What the CLI and the client say when ``url``'s certificate is refused: which server,
    why, and what to do about it."""
    code = getattr(error, "verify_code", None)
    text = f"the SSL certificate of {url} cannot be trusted: {reason(error)}. "
    if name_mismatch(error):
        return text + (
            f"Use a server URL with a name the certificate has (`pushy ssl check {url}` shows "
            "it), or give the server a certificate for this name"
        )
    if code in (_EXPIRED, _NOT_YET_VALID):
        return text + "The server needs a valid certificate (api_tls_cert)"
    where = options.trusted_certs_dir
    fetch = f"--trusted-certs-dir {where} {url}" if where else url
    return text + (
        f"If it is your server's certificate, trust it: `pushy ssl fetch {fetch}` (then "
        "check what it stored), or copy the server's api_tls_cert file into "
        f"{where or 'trusted_certs_dir'}; ssl_verify_mode :verify_none turns checks off"
    )
