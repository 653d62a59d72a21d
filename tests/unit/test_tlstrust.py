"""HTTPS pieces without a server: what a refused certificate is told as, which contexts Chef's
settings give, the server's check of its pair, the self-signed pair, and reload semantics."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.client.config import parse_config
from appliance.core.settings import load_settings, reload_settings
from appliance.knife.tlscert import self_signed
from appliance.server.tls import TlsSetupError, check_pair
from appliance.signedhttp import SignedClient
from appliance.tlstrust import (
    TlsOptions,
    client_context,
    trusted_files,
    untrusted_message,
)

URL = "https://push.example:10003"


def refusal(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_code = code
    error.verify_message = message
    return error


@pytest.mark.parametrize(
    "code, message, says, advice",
    [
        (18, "self-signed certificate", "self-signed", "pushy ssl fetch --trusted-certs-dir /tc"),
        (20, "unable to get local issuer certificate", "issuer is not", "pushy ssl fetch"),
        (10, "certificate has expired", "it has expired", "needs a valid certificate"),
        (62, "Hostname mismatch", "not for this host name", "pushy ssl check"),
        (64, "IP address mismatch", "not for this host name", "a name the certificate has"),
    ],
)
def test_a_refusal_names_the_url_the_reason_and_the_fix(code, message, says, advice):
    text = untrusted_message(URL, refusal(code, message), TlsOptions(trusted_certs_dir="/tc"))
    assert text.startswith(f"the SSL certificate of {URL} cannot be trusted: ")
    assert says in text and advice in text


def test_verify_modes_as_chef_applies_them_to_api_requests(tmp_path):
    assert client_context(TlsOptions()).verify_mode == ssl.CERT_REQUIRED
    assert client_context(TlsOptions()).check_hostname
    none = client_context(TlsOptions(verify_mode="verify_none"))
    assert none.verify_mode == ssl.CERT_NONE and not none.check_hostname
    forced = client_context(TlsOptions(verify_mode="verify_none", verify_api_cert=True))
    assert forced.verify_mode == ssl.CERT_REQUIRED and forced.check_hostname


def handshake(client: ssl.SSLContext, cert: Path, key: Path, host: str) -> None:
    """A TLS handshake in memory (no sockets): raises what the client refuses."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    pipes = [(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(2)]
    c = client.wrap_bio(pipes[0][0], pipes[0][1], server_hostname=host)
    s = server_context.wrap_bio(pipes[1][0], pipes[1][1], server_side=True)
    for _ in range(10):
        done = 0
        for side in (c, s):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        pipes[1][0].write(pipes[0][1].read())
        pipes[0][0].write(pipes[1][1].read())
        if done == 2:
            return
    raise AssertionError("no handshake")


def test_trusted_certs_dir_files_are_trusted_and_a_new_one_is_seen(tmp_path):
    trusted, served = tmp_path / "trusted", tmp_path / "served"
    trusted.mkdir()
    served.mkdir()
    a_crt, a_key = pair(served, "a", "a.example")
    b_crt, b_key = pair(served, "b", "b.example")
    (trusted / "notes.txt").write_text("not a certificate")
    (trusted / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nxx\n")
    Path(a_crt).rename(trusted / "a.crt")
    a_crt = str(trusted / "a.crt")
    assert [p.name for p in trusted_files(str(trusted))] == ["a.crt", "broken.pem"]
    options = TlsOptions(trusted_certs_dir=str(trusted))
    handshake(client_context(options), a_crt, a_key, "a.example")
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        handshake(client_context(options), a_crt, a_key, "other.example")
    assert refused.value.verify_code == 62
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        handshake(client_context(options), b_crt, b_key, "b.example")
    assert refused.value.verify_code == 18  # self-signed, not trusted
    (trusted / "b.pem").write_text(Path(b_crt).read_text())
    handshake(client_context(options), b_crt, b_key, "b.example")  # no stale cached context
    handshake(client_context(TlsOptions(verify_mode="verify_none")), b_crt, b_key, "x")


def test_client_config_gives_the_tls_options():
    config = parse_config(
        "chef_server_url 'https://h/organizations/o'\nssl_verify_mode :verify_none\n"
        "verify_api_cert true\ntrusted_certs_dir '/t'\nssl_ca_file '/ca.pem'\n",
        "push-jobs-client.rb",
    )
    assert config.tls == TlsOptions("verify_none", True, "/t", "/ca.pem", None)
    assert parse_config("", None).tls.trusted_certs_dir == "/etc/chef/trusted_certs"


def test_plain_http_clients_build_no_tls_context():
    client = SignedClient("http://127.0.0.1:1", tls=TlsOptions(ca_file="/nonexistent"))
    client.close()  # no error: the CA file is read only for https


# --------------------------------------------------------------------------- the server's pair


def pair(tmp_path: Path, name: str = "a", *names: str) -> tuple[str, str]:
    cert, key = self_signed([*(names or ("localhost",))], ["127.0.0.1"], 90)
    (tmp_path / f"{name}.crt").write_text(cert)
    (tmp_path / f"{name}.key").write_text(key)
    return str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key")


def test_a_good_pair_passes_and_bad_ones_say_what_is_wrong(tmp_path):
    cert, key = pair(tmp_path)
    assert check_pair(cert, key) == []
    assert check_pair(None, None) == []
    _, other_key = pair(tmp_path, "b")
    encrypted = tmp_path / "enc.key"
    private = serialization.load_pem_private_key(Path(key).read_bytes(), None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    cases = [
        ((cert, None), "'api_tls_key' is missing"),
        ((None, key), "'api_tls_cert' is missing"),
        ((cert, str(tmp_path / "none")), "cannot read"),
        ((key, key), "holds no PEM certificate"),
        ((cert, cert), "holds no usable PEM private key"),
        ((cert, str(encrypted)), "is encrypted"),
        ((cert, other_key), "is not the key of the certificate"),
    ]
    for (c, k), message in cases:
        with pytest.raises(TlsSetupError, match=message):
            check_pair(c, k)


def test_an_expiring_certificate_is_a_warning(tmp_path):
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=20)
    cert, key = self_signed(["localhost"], [], 21, now=old)
    (tmp_path / "c.crt").write_text(cert)
    (tmp_path / "c.key").write_text(key)
    (warning,) = check_pair(str(tmp_path / "c.crt"), str(tmp_path / "c.key"))
    assert "expires on" in warning


def test_self_signed_names_every_name_and_address():
    cert_pem, _ = self_signed(["push.example", "push"], ["192.0.2.7", "::1"], 90)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == ["push.example", "push"]
    assert alt.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("::1"),
    ]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 89 <= days <= 90


def test_reload_rereads_the_pair_only_while_https_stays_on():
    on, _ = load_settings({"api_tls_cert": "/a.crt", "api_tls_key": "/a.key"})
    renewed, _ = load_settings({"api_tls_cert": "/b.crt", "api_tls_key": "/b.key"})
    off, _ = load_settings({})
    settings, changed, restart = reload_settings(on, renewed)
    assert changed == ["api_tls_cert", "api_tls_key"] and restart == []
    assert settings.api_tls_cert == "/b.crt"
    _, changed, restart = reload_settings(off, on)
    assert changed == [] and sorted(restart) == ["api_tls_cert", "api_tls_key"]
    _, changed, restart = reload_settings(on, off)
    assert changed == [] and sorted(restart) == ["api_tls_cert", "api_tls_key"]
