"""PEM handling and session-key wrapping shared by server, client and CLI.

Chef hands out private keys as PKCS#1 (``BEGIN RSA PRIVATE KEY``) and stores public keys as
SPKI, but older clients registered PKCS#1 public keys or even self-signed certificates, so
the loaders accept all three. Anything else is a `KeyFormatError` with a readable message,
so a caller can turn it into a 400 rather than a traceback.

Two functions here are not pure and say so: `generate_rsa` and `encrypt_session_key` draw
from the operating system's RNG (key generation and the random PKCS#1 type-2 padding).
"""

from __future__ import annotations

import base64

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from appliance.core.rsaraw import b64decode_lenient

__all__ = [
    "KeyFormatError",
    "decrypt_session_key",
    "encrypt_session_key",
    "generate_rsa",
    "load_private_pem",
    "load_public_pem",
    "private_pem",
    "public_pem",
]


class KeyFormatError(ValueError):
    """A key, certificate or wrapped session key that cannot be used."""


def _as_bytes(pem: str | bytes, what: str) -> bytes:
    if isinstance(pem, bytes):
        return pem
    if isinstance(pem, str):
        try:
            return pem.encode("ascii")
        except UnicodeEncodeError as exc:
            raise KeyFormatError(f"{what} is not ASCII PEM text") from exc
    raise KeyFormatError(f"{what} must be PEM text, not {type(pem).__name__}")


def load_private_pem(pem: str | bytes, *, trusted: bool = False) -> RSAPrivateKey:
    """An unencrypted RSA private key, PKCS#1 or PKCS#8. ``trusted``: a key we generated
    ourselves (the benchmarks' thousands), so OpenSSL's costly RSA consistency check is
    skipped."""
    data = _as_bytes(pem, "private key")
    if b"-----BEGIN" not in data:
        raise KeyFormatError("private key is not PEM (no -----BEGIN line)")
    try:
        key = serialization.load_pem_private_key(
            data, password=None, unsafe_skip_rsa_key_validation=trusted
        )
    except TypeError as exc:  # encrypted key and no password
        raise KeyFormatError("private key is encrypted; a passphrase is not supported") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(f"cannot parse private key PEM: {exc}") from exc
    if not isinstance(key, RSAPrivateKey):
        raise KeyFormatError(f"private key is not RSA ({type(key).__name__})")
    return key


def load_public_pem(pem: str | bytes) -> RSAPublicKey:
    """An RSA public key from SPKI, PKCS#1 ``RSA PUBLIC KEY`` or a certificate's key."""
    data = _as_bytes(pem, "public key")
    if b"-----BEGIN CERTIFICATE" in data:
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError as exc:
            raise KeyFormatError(f"cannot parse certificate PEM: {exc}") from exc
    elif b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(f"cannot parse public key PEM: {exc}") from exc
    else:
        raise KeyFormatError("public key is not PEM (no -----BEGIN line)")
    if not isinstance(key, RSAPublicKey):
        raise KeyFormatError(f"public key is not RSA ({type(key).__name__})")
    return key


def private_pem(key: RSAPrivateKey) -> str:
    """PKCS#1 ``BEGIN RSA PRIVATE KEY``, the form Chef hands out (knife reads it)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")


def public_pem(key: RSAPublicKey | RSAPrivateKey) -> str:
    """SPKI ``BEGIN PUBLIC KEY``; given a private key, its public half."""
    if isinstance(key, RSAPrivateKey):
        key = key.public_key()
    return key.public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode("ascii")


def generate_rsa(bits: int = 2048) -> RSAPrivateKey:
    """A fresh key (e = 65537). Not pure: uses the OS RNG."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def encrypt_session_key(pub: RSAPublicKey, key32: bytes) -> str:
    """``encoded_session_key.key``: base64 (one line) of PKCS#1 v1.5 type-2 encryption.

    Not pure: the type-2 padding is random (OS RNG), as it must be.
    """
    try:
        wrapped = pub.encrypt(bytes(key32), padding.PKCS1v15())
    except ValueError as exc:
        raise KeyFormatError(f"cannot encrypt session key: {exc}") from exc
    return base64.b64encode(wrapped).decode("ascii")


def decrypt_session_key(priv: RSAPrivateKey, b64: str | bytes, *, length: int | None = 32) -> bytes:
    """Inverse of `encrypt_session_key`; whitespace in the base64 is ignored.

    OpenSSL 3.2+ uses "implicit rejection": decrypting with the wrong key yields random bytes
    instead of an error, so the expected `length` (32 for push-jobs session keys; None to skip)
    is the check that actually catches a wrong key in practice.
    """
    try:
        wrapped = b64decode_lenient(b64)
    except ValueError as exc:
        raise KeyFormatError(f"session key is not valid base64: {exc}") from exc
    try:
        plain = priv.decrypt(wrapped, padding.PKCS1v15())
    except ValueError as exc:
        raise KeyFormatError("cannot decrypt session key with this private key") from exc
    if length is not None and len(plain) != length:
        raise KeyFormatError(
            f"cannot decrypt session key with this private key (got {len(plain)} bytes, "
            f"expected {length})"
        )
    return plain
