"""Raw PKCS#1 type-1 RSA (the push-jobs heartbeat signature) and the PEM / session-key
helpers in `appliance.core.keys`."""

from __future__ import annotations

import base64
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID

from appliance.core import keys, rsaraw
from appliance.core.keys import KeyFormatError
from tests.unit.vectors import SPEC_PRIVATE_KEY_PEM

# client-knife.md A.2: the first heartbeat of the HMAC test vector.
HEARTBEAT_BODY = (
    b'{"node":"node1","client":"host1","protocol_version":"2.0","org":"myorg",'
    b'"type":"heartbeat","sequence":1,"timestamp":"Wed, 21 Oct 2015 07:28:00 GMT",'
    b'"incarnation_id":"b4c1a7a6-1111-4222-8333-444455556666","job_state":"idle","job_id":null}'
)

# A fixed key (mixlib-authentication's spec key), for tests whose outcome must not depend on a
# random key: with OpenSSL's "implicit rejection", PKCS#1 v1.5 decryption with the wrong key
# returns pseudo-random bytes of a pseudo-random length instead of failing.
FIXED_KEY_PEM = SPEC_PRIVATE_KEY_PEM


@pytest.fixture(scope="module")
def fixed_key():
    return keys.load_private_pem(FIXED_KEY_PEM)


@pytest.fixture(scope="module")
def key():
    return keys.generate_rsa(2048)


@pytest.fixture(scope="module")
def pub(key):
    return key.public_key()


@pytest.fixture(scope="module")
def other_key():
    return keys.generate_rsa(2048)


def ruby_encode64(raw: bytes) -> str:
    """Ruby's Base64.encode64 with only the final newline removed."""
    text = base64.b64encode(raw).decode()
    return "\n".join(text[i : i + 60] for i in range(0, len(text), 60))


# --- rsaraw


def test_hash_string_of_heartbeat_vector():
    assert rsaraw.hash_string(HEARTBEAT_BODY) == b"98LG2ell5wHqqEU2nUnrrhJx568="
    assert rsaraw.hash_string(b"") == b"2jmj7l5rSw0yVb/vlWAYkK/YBwk="


@pytest.mark.parametrize("length", [0, 1, 28, 100, 245])
def test_private_encrypt_round_trip(key, pub, length):
    data = bytes(range(256))[:length]
    sig = rsaraw.private_encrypt(key, data)
    assert len(sig) == 256
    assert rsaraw.public_decrypt(pub, sig) == data


def test_private_encrypt_matches_textbook_rsa_and_padding(key):
    data = b"98LG2ell5wHqqEU2nUnrrhJx568="
    sig = rsaraw.private_encrypt(key, data)
    numbers = key.private_numbers()
    n, e, d = numbers.public_numbers.n, numbers.public_numbers.e, numbers.d
    block = pow(int.from_bytes(sig, "big"), e, n).to_bytes(256, "big")
    assert block == b"\x00\x01" + b"\xff" * (256 - 3 - len(data)) + b"\x00" + data
    assert pow(int.from_bytes(block, "big"), d, n) == int.from_bytes(sig, "big")
    assert rsaraw.private_encrypt(key, data) == sig  # deterministic


def test_private_encrypt_too_long(key):
    with pytest.raises(ValueError, match="too long"):
        rsaraw.private_encrypt(key, b"x" * 246)


def test_public_decrypt_garbage_is_none(key, pub):
    n = pub.public_numbers().n
    assert rsaraw.public_decrypt(pub, b"\x01" * 256) is None
    assert rsaraw.public_decrypt(pub, b"") is None
    assert rsaraw.public_decrypt(pub, b"\x00" * 255) is None
    assert rsaraw.public_decrypt(pub, rsaraw.private_encrypt(key, b"abc") + b"\x00") is None
    assert rsaraw.public_decrypt(pub, (n + 1).to_bytes(256, "big")) is None
    # A type-2 block (encryption padding) is not a type-1 signature.
    block = b"\x00\x02" + b"\x5a" * 200 + b"\x00" + b"y" * 53
    d = key.private_numbers().d
    forged = pow(int.from_bytes(block, "big"), d, n).to_bytes(256, "big")
    assert rsaraw.public_decrypt(pub, forged) is None


def test_public_decrypt_with_other_key_is_none(key, other_key):
    sig = rsaraw.private_encrypt(key, b"hello")
    assert rsaraw.public_decrypt(other_key.public_key(), sig) is None


def test_rsa_sha1_sign_verify(key, pub, other_key):
    sig = rsaraw.rsa_sha1_sign(key, HEARTBEAT_BODY)
    assert "\n" not in sig and len(sig) == 344
    assert rsaraw.public_decrypt(pub, base64.b64decode(sig)) == b"98LG2ell5wHqqEU2nUnrrhJx568="
    assert rsaraw.rsa_sha1_verify(pub, HEARTBEAT_BODY, sig) is True
    assert rsaraw.rsa_sha1_verify(pub, HEARTBEAT_BODY, sig.encode()) is True
    assert rsaraw.rsa_sha1_verify(pub, HEARTBEAT_BODY + b" ", sig) is False
    assert rsaraw.rsa_sha1_verify(other_key.public_key(), HEARTBEAT_BODY, sig) is False


def test_rsa_sha1_verify_accepts_ruby_line_breaks(key, pub):
    raw = rsaraw.private_encrypt(key, rsaraw.hash_string(HEARTBEAT_BODY))
    wrapped = ruby_encode64(raw)
    assert wrapped.count("\n") == 5
    assert rsaraw.rsa_sha1_verify(pub, HEARTBEAT_BODY, wrapped) is True
    assert rsaraw.rsa_sha1_verify(pub, HEARTBEAT_BODY, wrapped + "\n") is True
    assert rsaraw.rsa_sha1_verify(pub, HEARTBEAT_BODY, wrapped.replace("\n", "\r\n")) is True


def test_rsa_sha1_verify_is_not_a_standard_signature(key, pub):
    standard = key.sign(HEARTBEAT_BODY, padding.PKCS1v15(), hashes.SHA1())
    assert rsaraw.rsa_sha1_verify(pub, HEARTBEAT_BODY, base64.b64encode(standard)) is False


@pytest.mark.parametrize("bad", ["", "!!!!", "abc", "ä" * 8, "AAAA", "A" * 344])
def test_rsa_sha1_verify_garbage_is_false(pub, bad):
    assert rsaraw.rsa_sha1_verify(pub, HEARTBEAT_BODY, bad) is False


def test_b64decode_lenient():
    assert rsaraw.b64decode_lenient("aGVs\nbG8=\n") == b"hello"
    assert rsaraw.b64decode_lenient(b" aGVsbG8= ") == b"hello"
    for bad in ("aGVsbG8", "aGVs*bG8=", "é"):
        with pytest.raises(ValueError):
            rsaraw.b64decode_lenient(bad)


# --- keys: PEM


def test_private_pem_is_pkcs1_and_round_trips(key):
    pem = keys.private_pem(key)
    assert pem.startswith("-----BEGIN RSA PRIVATE KEY-----\n")
    assert keys.load_private_pem(pem).private_numbers() == key.private_numbers()
    assert keys.load_private_pem(pem.encode()).private_numbers() == key.private_numbers()


def test_load_private_pkcs8(key):
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert keys.load_private_pem(pkcs8).private_numbers() == key.private_numbers()


def test_public_pem_is_spki_and_round_trips(key, pub):
    pem = keys.public_pem(pub)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert keys.public_pem(key) == pem
    assert keys.load_public_pem(pem).public_numbers() == pub.public_numbers()


def test_load_public_pkcs1(pub):
    pkcs1 = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    assert pkcs1.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    assert keys.load_public_pem(pkcs1.decode()).public_numbers() == pub.public_numbers()


def _self_signed_cert(private_key) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2040, 1, 1, tzinfo=datetime.UTC))
        .sign(private_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_load_public_from_certificate(key, pub):
    pem = _self_signed_cert(key)
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert keys.load_public_pem(pem).public_numbers() == pub.public_numbers()
    assert keys.load_public_pem(pem.decode()).public_numbers() == pub.public_numbers()


def test_certificate_key_verifies_heartbeat(key):
    loaded = keys.load_public_pem(_self_signed_cert(key))
    sig = rsaraw.rsa_sha1_sign(key, b"body")
    assert rsaraw.rsa_sha1_verify(loaded, b"body", sig)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "hello",
        b"\x00\x01\x02",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n",
        "ключ",
    ],
)
def test_load_public_garbage(garbage):
    with pytest.raises(KeyFormatError) as info:
        keys.load_public_pem(garbage)
    assert isinstance(info.value, ValueError)
    assert str(info.value)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "hello",
        "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        "ключ",
    ],
)
def test_load_private_garbage(garbage):
    with pytest.raises(KeyFormatError, match="private key"):
        keys.load_private_pem(garbage)


def test_load_wrong_kind_of_key(key, pub):
    with pytest.raises(KeyFormatError):
        keys.load_private_pem(keys.public_pem(pub))
    with pytest.raises(KeyFormatError):
        keys.load_public_pem(keys.private_pem(key))
    with pytest.raises(KeyFormatError):
        keys.load_public_pem(None)  # type: ignore[arg-type]


def test_non_rsa_keys_rejected():
    eck = ec.generate_private_key(ec.SECP256R1())
    priv = eck.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pubpem = eck.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyFormatError, match="not RSA"):
        keys.load_private_pem(priv)
    with pytest.raises(KeyFormatError, match="not RSA"):
        keys.load_public_pem(pubpem)
    with pytest.raises(KeyFormatError, match="not RSA"):
        keys.load_public_pem(_self_signed_cert(eck))


def test_encrypted_private_key_rejected(key):
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(KeyFormatError, match="encrypted"):
        keys.load_private_pem(pem)


def test_generate_rsa_sizes(key):
    assert key.key_size == 2048
    assert key.private_numbers().public_numbers.e == 65537


# --- keys: session key wrapping


def test_session_key_round_trip(key, pub):
    session = bytes(range(32))
    wrapped = keys.encrypt_session_key(pub, session)
    assert "\n" not in wrapped
    assert len(base64.b64decode(wrapped)) == 256
    assert keys.decrypt_session_key(key, wrapped) == session
    # Ruby-style line breaks are fine too.
    assert keys.decrypt_session_key(key, ruby_encode64(base64.b64decode(wrapped))) == session
    # Standard PKCS#1 v1.5 type 2: cryptography's own decrypt agrees.
    assert key.decrypt(base64.b64decode(wrapped), padding.PKCS1v15()) == session


def test_session_key_is_randomised(pub):
    session = b"k" * 32
    assert keys.encrypt_session_key(pub, session) != keys.encrypt_session_key(pub, session)


def test_session_key_not_for_this_key_or_garbage(fixed_key):
    # Deterministic: a fixed key and fixed ciphertexts that were not made for it.
    for ciphertext in (b"\x00" * 256, b"\x00" + b"\x5a" * 255, b"\x01" * 256):
        with pytest.raises(KeyFormatError, match="cannot decrypt"):
            keys.decrypt_session_key(fixed_key, base64.b64encode(ciphertext).decode())
    with pytest.raises(KeyFormatError, match="cannot decrypt"):
        keys.decrypt_session_key(fixed_key, base64.b64encode(b"\x00" * 255).decode())
    with pytest.raises(KeyFormatError, match="base64"):
        keys.decrypt_session_key(fixed_key, "not*base64")


def test_session_key_for_fixed_key_round_trip(fixed_key):
    wrapped = keys.encrypt_session_key(fixed_key.public_key(), b"0123456789abcdef0123456789abcdef")
    assert keys.decrypt_session_key(fixed_key, wrapped) == b"0123456789abcdef0123456789abcdef"


def test_session_key_length_check_optional(key, pub):
    wrapped = keys.encrypt_session_key(pub, b"short")
    with pytest.raises(KeyFormatError, match="expected 32"):
        keys.decrypt_session_key(key, wrapped)
    assert keys.decrypt_session_key(key, wrapped, length=None) == b"short"


def test_session_key_too_long_for_key(pub):
    with pytest.raises(KeyFormatError):
        keys.encrypt_session_key(pub, b"x" * 300)
