"""``pushy admin tls-cert``: a self-signed certificate and key for the API port, to try HTTPS
without a certificate authority (docs/operations.md "HTTPS").

The certificate names every ``--name`` and ``--ip`` in its subject alternative names (clients
check the host name against those, not the CN) and is a server certificate (not a CA): it is
trusted only where it is copied, e.g. by ``pushy ssl fetch`` / ``knife ssl fetch``.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import re
import socket
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.knife.files import check_target, write_private
from appliance.knife.session import CliError

DEFAULT_DAYS = 825
MAX_DAYS = 3650
KEY_BITS = 2048  # RSA: what every Chef and Ruby/OpenSSL client of the last decade accepts
_HOST = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,63})*\.?")

__all__ = ["add_parser", "self_signed"]


def self_signed(
    names: list[str], ips: list[str], days: int, *, now: datetime.datetime | None = None
) -> tuple[str, str]:
    """(certificate PEM, private key PEM) of a new self-signed server certificate for
    ``names`` (the first is the CN) and ``ips``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    now = now or datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or ips)[0])])
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks a little behind
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def _split(names: list[str], ips: list[str]) -> tuple[list[str], list[str]]:
    """``--name`` values that are addresses go with the ``--ip`` ones; each is checked."""
    dns: list[str] = []
    addresses: list[str] = []
    for value in [*names, *ips]:
        try:
            addresses.append(str(ipaddress.ip_address(value)))
            continue
        except ValueError:
            if value in ips:
                raise CliError(f"--ip {value!r} is not an IP address") from None
        if not _HOST.fullmatch(value) or len(value) > 253:
            raise CliError(f"--name {value!r} is not a host name")
        dns.append(value.rstrip(".").lower())
    return list(dict.fromkeys(dns)), list(dict.fromkeys(addresses))


def _file_stem(name: str) -> str:
    """A file name from the certificate's first name (``*`` → ``wildcard``)."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", name.replace("*", "wildcard"))


def run_tls_cert(args: argparse.Namespace) -> int:
    names, ips = _split(args.name or [socket.getfqdn()], args.ip or [])
    if not 1 <= args.days <= MAX_DAYS:
        raise CliError(f"--days must be from 1 to {MAX_DAYS}")
    out = Path(args.out_dir).expanduser()
    if not out.is_dir():
        raise CliError(f"--out-dir {out} is not a directory")
    stem = _file_stem((names or ips)[0])
    cert_path, key_path = (out / f"{stem}.crt").absolute(), (out / f"{stem}.key").absolute()
    for path in (cert_path, key_path):
        check_target(path, args.force)
    cert_pem, key_pem = self_signed(names, ips, args.days)
    write_private(key_path, key_pem, force=args.force)
    write_private(cert_path, cert_pem, force=args.force, mode=0o644)
    ends = x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc
    print(f"Wrote {cert_path} (self-signed for {', '.join(names + ips)}; until {ends:%Y-%m-%d})")
    print(f"Wrote {key_path} (private key, mode 0600: readable by the server's user only)")
    host = (names or ips)[0]
    host = f"[{host}]" if ":" in host else host
    print(
        f"\nIn the server's settings (/etc/pushy/pushy-server.toml), then restart it:\n"
        f'  api_tls_cert = "{cert_path}"\n  api_tls_key = "{key_path}"\n'
        f"\nClients trust it with `pushy ssl fetch https://{host}:10003` (or knife ssl fetch), "
        f"or with a copy of {cert_path.name} in their trusted_certs_dir. "
        "See docs/operations.md, HTTPS."
    )
    return 0


def add_parser(objects: Any) -> None:
    """``pushy admin tls-cert`` under the admin command's sub-parsers."""
    p = objects.add_parser(
        "tls-cert",
        help="make a self-signed certificate and key for HTTPS on the API port",
        description="Write DIR/NAME.crt (mode 0644) and DIR/NAME.key (mode 0600): a new RSA "
        f"{KEY_BITS} key and a self-signed server certificate for every --name and --ip. Set "
        "them as api_tls_cert and api_tls_key. Exit 0 when written, 100 otherwise.",
    )
    p.set_defaults(func=run_tls_cert)
    p.add_argument(
        "--name",
        action="append",
        metavar="HOST",
        help="a host name clients use (repeat for more; the first names the files; "
        "default: this machine's FQDN)",
    )
    p.add_argument(
        "--ip", action="append", metavar="ADDR", help="an IP address clients use (repeatable)"
    )
    p.add_argument("--out-dir", default=".", metavar="DIR", help="where to write (default: .)")
    p.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help=f"validity (default {DEFAULT_DAYS})"
    )
    p.add_argument("--force", action="store_true", help="replace existing files")
