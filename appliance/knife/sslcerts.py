"""``pushy ssl fetch [URL]`` and ``pushy ssl check [URL]``: ``knife ssl fetch`` / ``knife ssl
check``, with knife's messages and exit statuses (0 verified or stored, 1 otherwise).

Both default to the configured server URL and read ``trusted_certs_dir`` (and ``ssl_ca_file``,
``ssl_ca_path``) from the same knife.rb / credentials / pushy TOML as every other command;
``--trusted-certs-dir`` names another directory (e.g. a node's ``/etc/chef/trusted_certs``).
``check`` verifies against the system store plus those, whatever ``ssl_verify_mode`` says, as
knife does; ``fetch`` stores the chain the server sends, unverified (trust on first use),
one ``CN.crt`` file per certificate, named as knife names them.

Differences: knife's list of "invalid certificates in your trusted_certs_dir" flags every
certificate that is not a self-signed root (so a fetched chain always shows up); ours names
the files OpenSSL cannot use: not PEM, or expired.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import socket
import ssl
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from appliance.knife.credentials import resolve
from appliance.knife.files import write_private
from appliance.knife.session import CliError
from appliance.tlstrust import TlsOptions, name_mismatch, reason, trust_context, trusted_files

EXIT_OK, EXIT_FAILED = 0, 1  # knife ssl check / fetch: exit 1 on any failure
CONNECT_SECONDS = 10.0
SERVER_CA_HINT = "its certificate is the file its api_tls_cert setting names"


def _msg(text: str = "") -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _error(text: str) -> None:
    _err(f"ERROR: {text}")


def _target(args: argparse.Namespace) -> tuple[str, str, int, TlsOptions]:
    """(URL as given, host, port, SSL settings) of the command, knife's ``validate_uri``."""
    if args.key is None:  # no request is signed: keep the resolver from looking for a key
        args.key = os.devnull
    creds = resolve(args)
    tls = creds.tls
    if args.trusted_certs_dir:
        tls = replace(tls, trusted_certs_dir=str(Path(args.trusted_certs_dir).expanduser()))
    given = args.url or creds.server_url
    try:
        parts = urlsplit(given)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
        parts = None
    if parts is not None and port is None and host:
        port = {"https": 443, "http": 80}.get(parts.scheme.lower())
    if not host or not port:
        _error(f"Given URI: `{given}' is invalid")
        raise SystemExit(EXIT_FAILED)
    return given, host, port, tls


def _connect(host: str, port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection((host, port), timeout=CONNECT_SECONDS)
    try:
        return context.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def _unverified_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _peer_chain(host: str, port: int) -> list[x509.Certificate]:
    """The certificates the server sends, leaf first, unverified."""
    with _connect(host, port, _unverified_context()) as sock:
        sslobj: Any = getattr(sock, "_sslobj", None)
        getter = getattr(sslobj, "get_unverified_chain", None)  # Python 3.10+ (public in 3.13)
        if getter is not None:
            pems = [c.public_bytes() for c in getter() or []]
            if pems:
                return [x509.load_pem_x509_certificate(p.encode()) for p in pems]
        der = sock.getpeercert(binary_form=True)
    return [x509.load_der_x509_certificate(der)] if der else []


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        return str(names[0].value)
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return str(next(iter(alt)).value)
    except (x509.ExtensionNotFound, StopIteration):
        return "unnamed"


def _alt_names(cert: x509.Certificate) -> list[str]:
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in alt]


def normalize_cn(cn: str) -> str:
    """knife's file name for a CN: ``*`` → ``wildcard``, anything not alphanumeric or ``-`` →
    ``_``."""
    return re.sub(r"[^0-9A-Za-z-]", "_", cn.replace("*", "wildcard"))


def _not_ssl(given: str, exc: ssl.SSLError) -> bool:
    """knife: 'unknown protocol' (here: wrong version number, record too long) means a plain
    HTTP service; say so and suggest https."""
    text = f"{exc.reason} {exc}".upper()
    if not any(w in text for w in ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER")):
        return False
    _error(f"The service at the given URI ({given}) does not accept SSL connections")
    if given.lower().startswith("http:"):
        _error(f"Perhaps you meant to connect to '{'https' + given[4:]}'?")
    return True


# ---------------------------------------------------------------------------------------
# pushy ssl fetch


def run_fetch(args: argparse.Namespace) -> int:
    given, host, port, tls = _target(args)
    directory = Path(tls.trusted_certs_dir or Path.home() / ".chef" / "trusted_certs")
    _err(
        f"WARNING: Certificates from {host} will be fetched and placed in your trusted_cert\n"
        f"directory ({directory}).\n\n"
        "Pushy has no means to verify these are the correct certificates. You should\n"
        "verify the authenticity of these certificates after downloading.\n"
    )
    try:
        chain = _peer_chain(host, port)
    except ssl.SSLError as exc:
        if _not_ssl(given, exc):
            return EXIT_FAILED
        raise CliError(f"TLS handshake with {host}:{port} failed: {exc}", EXIT_FAILED) from None
    except OSError as exc:
        raise CliError(f"cannot connect to {host}:{port}: {exc}", EXIT_FAILED) from None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {directory}: {exc.strerror}", EXIT_FAILED) from None
    for cert in chain:
        cn = _cn(cert)
        path = directory / f"{normalize_cn(cn)}.crt"
        _msg(f"Adding certificate for {cn} in {path}")
        pem = cert.public_bytes(Encoding.PEM).decode()
        write_private(path, pem, force=True, mode=0o644)
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# pushy ssl check


def _invalid_trusted(tls: TlsOptions) -> list[str]:
    """Files of trusted_certs_dir that OpenSSL cannot use, with why."""
    out = []
    now = datetime.datetime.now(datetime.UTC)
    for path in trusted_files(tls.trusted_certs_dir):
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError) as exc:
            out.append(f"{path}: {getattr(exc, 'strerror', None) or 'not a PEM certificate'}")
            continue
        if any(c.not_valid_after_utc <= now for c in certs):
            out.append(f"{path}: certificate has expired")
    return out


def _configuration_info(tls: TlsOptions) -> None:
    paths = ssl.get_default_verify_paths()
    _msg("\nConfiguration Info:\n")
    _err("OpenSSL Configuration:")
    _err(f"* Version: {ssl.OPENSSL_VERSION}")
    _err(f"* Certificate file: {paths.openssl_cafile}")
    _err(f"* Certificate directory: {paths.openssl_capath}")
    _err("Chef SSL Configuration:")
    _err(f"* ssl_ca_path: {_inspect(tls.ca_path)}")
    _err(f"* ssl_ca_file: {_inspect(tls.ca_file)}")
    _err(f"* trusted_certs_dir: {_inspect(tls.trusted_certs_dir)}")


def _inspect(value: str | None) -> str:
    """Ruby's ``inspect`` of a String or nil, as knife prints its settings."""
    return "nil" if value is None else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _verify_x509(tls: TlsOptions) -> None:
    invalid = _invalid_trusted(tls)
    if not invalid:
        return
    _configuration_info(tls)
    listing = "\n".join(invalid)
    _err(
        "WARNING: There are invalid certificates in your trusted_certs_dir.\n"
        "OpenSSL will not use the following certificates when verifying SSL connections:\n\n"
        f"{listing}\n\n\nTO FIX THESE WARNINGS:\n\n"
        "Remove these files, or replace them with the server's current certificate\n"
        f"(`pushy ssl fetch`; on a pushy server, {SERVER_CA_HINT}).\n"
    )


def _invalid_cert(host: str, port: int, tls: TlsOptions) -> None:
    try:
        chain = _peer_chain(host, port)
        issuer = chain[0].issuer.rfc4514_string() if chain else "(none sent)"
    except (OSError, ValueError) as exc:
        issuer = f"(unavailable: {exc})"
    _msg(f"Certificate issuer data: {issuer}")
    _configuration_info(tls)
    _err(
        "\nTO FIX THIS ERROR:\n\n"
        "If the server you are connecting to uses a self-signed certificate, you must\n"
        "configure pushy (and knife) to trust that server's certificate.\n\n"
        f"On a pushy server, {SERVER_CA_HINT}.\n\n"
        f"Copy that file to your trusted_certs_dir (currently: {tls.trusted_certs_dir})\n"
        "using SSH/SCP or some other secure method, or run `pushy ssl fetch` and check what\n"
        "it stored, then re-run this command to confirm that the server's certificate is\n"
        "now trusted.\n"
    )


def _invalid_host(host: str, port: int) -> None:
    try:
        chain = _peer_chain(host, port)
    except (OSError, ValueError):
        chain = []
    cn = _cn(chain[0]) if chain else "(unknown)"
    names = ", ".join(_alt_names(chain[0])) if chain else ""
    _error(f"You are attempting to connect to:   '{host}'")
    _error(f"The server's certificate belongs to '{cn}'" + (f" (names: {names})" if names else ""))
    _err(
        "\nTO FIX THIS ERROR:\n\n"
        "The solution for this issue depends on your networking configuration. If you\n"
        f"are able to connect to this server using the hostname {cn}\n"
        f"instead of {host}, then you can resolve this issue by updating chef_server_url\n"
        "in your configuration file.\n\n"
        f"If you are not able to connect to the server using the hostname {cn}\n"
        "you will have to update the certificate on the server to use the correct hostname\n"
        "(`pushy admin tls-cert --name HOST` makes one for every name you give).\n"
    )


def run_check(args: argparse.Namespace) -> int:
    given, host, port, tls = _target(args)
    _verify_x509(tls)
    _msg(f"Connecting to host {host}:{port}")
    try:
        with _connect(host, port, trust_context(tls)):
            pass
    except ssl.SSLCertVerificationError as exc:
        if name_mismatch(exc):
            _error(
                "The SSL cert is signed by a trusted authority but is not valid for the given "
                "hostname"
            )
            _invalid_host(host, port)
        else:
            _error(f"The SSL certificate of {host} could not be verified: {reason(exc)}")
            _invalid_cert(host, port, tls)
        return EXIT_FAILED
    except ssl.SSLError as exc:
        if not _not_ssl(given, exc):
            _error(f"TLS handshake with {host}:{port} failed: {exc}")
        return EXIT_FAILED
    except OSError as exc:
        _error(f"cannot connect to {host}:{port}: {exc.strerror or exc}")
        return EXIT_FAILED
    _msg(f"Successfully verified certificates from `{host}'")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    ssl_parser = sub.add_parser(
        "ssl",
        help="check or fetch an HTTPS server's certificate (knife ssl check / fetch)",
        description="Check an HTTPS server's certificate, or store it in trusted_certs_dir.",
    )
    ssl_parser.set_defaults(operator=True)
    actions = ssl_parser.add_subparsers(dest="ssl_action", metavar="ACTION")
    for name, func, text in (
        (
            "check",
            run_check,
            "verify the server's certificate and host name against the system's CA "
            "certificates, ssl_ca_file, ssl_ca_path and trusted_certs_dir (knife ssl check). "
            "Exit 0 when verified, 1 otherwise.",
        ),
        (
            "fetch",
            run_fetch,
            "store the certificates the server sends in trusted_certs_dir, one CN.crt file "
            "each, without verifying them: check them yourself (knife ssl fetch). Exit 0 when "
            "stored, 1 otherwise.",
        ),
    ):
        p = actions.add_parser(name, parents=[common], help=text.split(" (")[0], description=text)
        p.set_defaults(func=func)
        p.add_argument("url", nargs="?", metavar="URL", help="default: the configured server URL")
        p.add_argument(
            "--trusted-certs-dir",
            metavar="DIR",
            help="instead of the configured one (e.g. a node's /etc/chef/trusted_certs)",
        )
