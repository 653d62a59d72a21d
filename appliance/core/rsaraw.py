"""RSA in the "1.0 style": raw PKCS#1 v1.5 type-1 private encryption and its inverse.

Chef's 1.0/1.1 request signatures and the push-jobs server heartbeat (`rsa2048_sha1`) are
OpenSSL ``RSA_private_encrypt`` of a short *text* with PKCS#1 v1.5 type-1 padding: no hash
and no DigestInfo around it. ``cryptography`` has no public API to make such a value, so the
padding and the modular exponentiation are done here by hand; the inverse (public decrypt)
is ``recover_data_from_signature`` with no hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

__all__ = [
    "b64decode_lenient",
    "hash_string",
    "private_encrypt",
    "public_decrypt",
    "rsa_sha1_sign",
    "rsa_sha1_verify",
]

# PKCS#1 v1.5: 00 01 PS 00 D with at least 8 bytes of PS, hence k - 11 bytes of payload.
_PAD_OVERHEAD = 11


def private_encrypt(key: RSAPrivateKey, data: bytes) -> bytes:
    """OpenSSL ``RSA_private_encrypt(..., RSA_PKCS1_PADDING)``: deterministic, k bytes long."""
    priv = key.private_numbers()
    pub = priv.public_numbers
    n, e = pub.n, pub.e
    k = (n.bit_length() + 7) // 8
    if len(data) > k - _PAD_OVERHEAD:
        raise ValueError(
            f"data too long for a {k * 8}-bit RSA key: {len(data)} > {k - _PAD_OVERHEAD} bytes"
        )
    block = b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data
    m = int.from_bytes(block, "big")
    # CRT: about 3-4x faster than pow(m, d, n).
    p, q = priv.p, priv.q
    m1 = pow(m, priv.dmp1, p)
    m2 = pow(m, priv.dmq1, q)
    h = (priv.iqmp * (m1 - m2)) % p
    s = m2 + h * q
    # A CRT fault would leak the factors (Bellcore attack); checking costs one small pow.
    if pow(s, e, n) != m:
        s = pow(m, priv.d, n)
    return s.to_bytes(k, "big")


def public_decrypt(key: RSAPublicKey, sig: bytes) -> bytes | None:
    """Inverse of `private_encrypt`; None when the length or the type-1 padding is wrong."""
    k = (key.key_size + 7) // 8
    if len(sig) != k:
        return None
    try:
        return key.recover_data_from_signature(sig, padding.PKCS1v15(), None)
    except (InvalidSignature, ValueError):
        return None


def hash_string(body: bytes) -> bytes:
    """Chef's ``hash_string``: base64 of SHA-1, 28 ASCII bytes, no newline."""
    return base64.b64encode(hashlib.sha1(body).digest())


def b64decode_lenient(text: str | bytes) -> bytes:
    """Decode standard base64 that may hold whitespace, such as Ruby's ``encode64`` output
    (a newline every 60 characters). Raises ValueError for anything else."""
    if isinstance(text, str):
        try:
            text = text.encode("ascii")
        except UnicodeEncodeError as exc:
            raise ValueError("base64 text is not ASCII") from exc
    compact = b"".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64: {exc}") from exc


def rsa_sha1_sign(key: RSAPrivateKey, body: bytes) -> str:
    """The `rsa2048_sha1` signature of a push-jobs message body (base64, one line)."""
    return base64.b64encode(private_encrypt(key, hash_string(body))).decode("ascii")


def rsa_sha1_verify(pubkey: RSAPublicKey, body: bytes, sig_b64: str | bytes) -> bool:
    """Check an `rsa2048_sha1` signature; tolerant of line breaks in the base64."""
    try:
        sig = b64decode_lenient(sig_b64)
    except ValueError:
        return False
    recovered = public_decrypt(pubkey, sig)
    if recovered is None:
        return False
    return hmac.compare_digest(recovered, hash_string(body))
