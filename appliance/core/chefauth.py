"""Chef signed-header request authentication (mixlib-authentication / chef_authn).

Both sides live here so that one set of canonicalisation rules serves the server, our CLI,
our client and the tests. Verification is split in steps because the server has to look the
principal's keys up (by user id, an I/O step) between reading the headers and checking the
signature; and the webmachine error order (400 header errors before 401 clock errors before
the key lookup) is kept by the caller calling the steps in order.

Versions: 1.0 and 1.1 "sign" by raw PKCS#1 type-1 private encryption of the canonical text
(see `rsaraw`); 1.2 is RSA-SHA1 PKCS#1 v1.5 (verify only, chef_authn knows it, mixlib does
not); 1.3 is RSA-SHA256 PKCS#1 v1.5 and also signs ``X-Ops-Server-API-Version``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from appliance.core.rsaraw import b64decode_lenient, private_encrypt, public_decrypt

__all__ = [
    "AuthError",
    "DEFAULT_SKEW",
    "SignedRequest",
    "WWW_AUTHENTICATE",
    "canonical_path",
    "canonical_request",
    "check_time",
    "format_timestamp",
    "parse_auth_headers",
    "parse_timestamp",
    "sign_request",
    "verify_signature",
]

DEFAULT_SKEW = 900
# Sent with every 401 by the original server.
WWW_AUTHENTICATE = 'X-Ops-Sign version="1.0" version="1.1"'

# Order matters: it is the order of names in the 400 "missing headers" message.
_REQUIRED = ("X-Ops-UserId", "X-Ops-Timestamp", "X-Ops-Sign", "X-Ops-Content-Hash")
_ALGORITHM_FOR_VERSION = {"1.0": "sha1", "1.1": "sha1", "1.2": "sha1", "1.3": "sha256"}
_SIGNABLE = {
    "1.0": "algorithm=sha1;version=1.0;",
    "1.1": "algorithm=sha1;version=1.1;",
    "1.3": "algorithm=sha256;version=1.3;",
}
_LINE = 60
# A 16384-bit key needs 37 lines; anything longer is not a signature.
_MAX_AUTH_LINES = 64
_TIMESTAMP_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")
_API_VERSION_RE = re.compile(r"[+-]?[0-9]{1,9}")
_UNSUPPORTED = "Unsupported authentication protocol version"


class AuthError(Exception):
    """A request rejected before (or instead of) the signature check; maps to an HTTP reply."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"AuthError({self.status!r}, {self.message!r})"


@dataclass(frozen=True)
class SignedRequest:
    """The authentication-relevant facts of one request, ready for the key lookup."""

    user_id: str
    version: str
    algorithm: str
    timestamp: str
    content_hash: str  # as sent in X-Ops-Content-Hash
    body_hash: str  # as computed from the received body
    signature: bytes  # decoded X-Ops-Authorization-*; b"" when absent or not base64
    method: str  # upper case
    path: str  # canonical
    server_api_version: str | None  # header value as sent
    canonical: bytes | None  # text the signature must cover; None if it cannot be built

    @property
    def content_hash_ok(self) -> bool:
        return hmac.compare_digest(self.content_hash.encode(), self.body_hash.encode())


# ---------------------------------------------------------------------------------------------
# canonical forms


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _hash(algorithm: str, data: bytes) -> str:
    return _b64(hashlib.new(algorithm, data).digest())


def canonical_path(path: str) -> str:
    """Query removed, runs of ``/`` collapsed, trailing ``/`` removed (``/`` stays ``/``)."""
    path = path.split("?", 1)[0]
    path = re.sub(r"/{2,}", "/", path)
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return path or "/"


def _canonical_api_version(value: str | None) -> str | None:
    # chef_authn reads the header with binary_to_integer and prints it back with ~B.
    if value is None:
        return "0"
    if not _API_VERSION_RE.fullmatch(value):
        return None
    return str(int(value))


def canonical_request(
    *,
    version: str,
    method: str,
    path: str,
    body_hash: str,
    timestamp: str,
    user_id: str,
    server_api_version: str | None = None,
) -> bytes:
    """The exact text a version-`version` signature covers (no trailing newline).

    `path` is canonicalised here; `body_hash` is base64 of the version's digest of the body.
    Raises ValueError for an unknown version or an API version that is not an integer.
    """
    if version not in _ALGORITHM_FOR_VERSION:
        raise ValueError(f"unsupported signing version {version!r}")
    path = canonical_path(path)
    method = method.upper()
    if version == "1.3":
        api = _canonical_api_version(server_api_version)
        if api is None:
            raise ValueError(f"X-Ops-Server-API-Version is not an integer: {server_api_version!r}")
        lines = [
            f"Method:{method}",
            f"Path:{path}",
            f"X-Ops-Content-Hash:{body_hash}",
            "X-Ops-Sign:version=1.3",
            f"X-Ops-Timestamp:{timestamp}",
            f"X-Ops-UserId:{user_id}",
            f"X-Ops-Server-API-Version:{api}",
        ]
    else:
        uid = user_id if version == "1.0" else _hash("sha1", user_id.encode("utf-8"))
        lines = [
            f"Method:{method}",
            f"Hashed Path:{_hash('sha1', path.encode('utf-8'))}",
            f"X-Ops-Content-Hash:{body_hash}",
            f"X-Ops-Timestamp:{timestamp}",
            f"X-Ops-UserId:{uid}",
        ]
    return "\n".join(lines).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# timestamps


def format_timestamp(epoch: float) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC, fractions of a second dropped."""
    return datetime.fromtimestamp(math.floor(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch of a strict ``YYYY-MM-DDTHH:MM:SSZ``; ValueError otherwise."""
    m = _TIMESTAMP_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a YYYY-MM-DDTHH:MM:SSZ timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups())
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


# ---------------------------------------------------------------------------------------------
# signing (client side)


def sign_request(
    *,
    key: RSAPrivateKey,
    user_id: str,
    method: str,
    path: str,
    body: bytes,
    timestamp: str,
    version: str = "1.3",
    server_api_version: str | None = "1",
) -> dict[str, str]:
    """The X-Ops-* headers for one request. 1.2 is not offered (mixlib never sends it).

    Raises ValueError for an unsupported version, a timestamp not in the strict form, or
    (1.0) a canonical text too long for the key, as mixlib does with a 200-char user id.
    """
    if version not in _SIGNABLE:
        raise ValueError(f"cannot sign with version {version!r}; use 1.0, 1.1 or 1.3")
    parse_timestamp(timestamp)
    algorithm = _ALGORITHM_FOR_VERSION[version]
    body_hash = _hash(algorithm, body)
    text = canonical_request(
        version=version,
        method=method,
        path=path,
        body_hash=body_hash,
        timestamp=timestamp,
        user_id=user_id,
        server_api_version=server_api_version,
    )
    if version == "1.3":
        raw = key.sign(text, padding.PKCS1v15(), hashes.SHA256())
    else:
        raw = private_encrypt(key, text)
    sig = _b64(raw)
    headers = {
        "X-Ops-Sign": _SIGNABLE[version],
        "X-Ops-Userid": user_id,
        "X-Ops-Timestamp": timestamp,
        "X-Ops-Content-Hash": body_hash,
    }
    for i in range(0, len(sig), _LINE):
        headers[f"X-Ops-Authorization-{i // _LINE + 1}"] = sig[i : i + _LINE]
    if server_api_version is not None:
        headers["X-Ops-Server-API-Version"] = server_api_version
    return headers


# ---------------------------------------------------------------------------------------------
# verification (server side)


def _parse_sign(value: str) -> tuple[str, str]:
    fields: dict[str, str] = {}
    for part in value.split(";"):
        if "=" not in part:
            continue
        name, _, val = part.partition("=")
        fields.setdefault(name.strip(), val.strip())
    version = fields.get("version")
    if version not in _ALGORITHM_FOR_VERSION:
        raise AuthError(400, _UNSUPPORTED)
    expected = _ALGORITHM_FOR_VERSION[version]
    algorithm = fields.get("algorithm", expected)
    if algorithm != expected:
        raise AuthError(400, _UNSUPPORTED)
    return version, algorithm


def _check_time(user_id: str, timestamp: str, now: float, skew: float) -> None:
    try:
        t = parse_timestamp(timestamp)
    except ValueError:
        raise AuthError(401, "bad header(s) 'X-Ops-Timestamp'") from None
    # chef_authn compares whole seconds of "now".
    if not abs(math.floor(now) - t) < skew:
        raise AuthError(
            401, f"Failed to authenticate as {user_id}. Synchronize the clock on your host."
        )


def parse_auth_headers(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    *,
    now: float | None = None,
    skew: float = DEFAULT_SKEW,
) -> SignedRequest:
    """Step 1: read and check the X-Ops headers (names case-insensitive).

    Raises `AuthError` 400 for missing headers or an unsupported X-Ops-Sign. Given `now`,
    the clock is checked too, between those two, which is chef_authn's order; otherwise call
    `check_time` next. Missing or undecodable authorization lines are not an error here: the
    signature simply fails later (401).
    """
    h = {str(k).lower(): v for k, v in headers.items()}
    missing = [name for name in _REQUIRED if h.get(name.lower()) is None]
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        raise AuthError(400, f"missing required authentication header(s) {names}")
    user_id = h["x-ops-userid"]
    timestamp = h["x-ops-timestamp"]
    if now is not None:
        _check_time(user_id, timestamp, now, skew)
    version, algorithm = _parse_sign(h["x-ops-sign"])

    lines: list[str] = []
    for i in range(1, _MAX_AUTH_LINES + 1):
        line = h.get(f"x-ops-authorization-{i}")
        if line is None:
            break
        lines.append(line)
    try:
        signature = b64decode_lenient("".join(lines))
    except ValueError:
        signature = b""

    body_hash = _hash(algorithm, body)
    api_version = h.get("x-ops-server-api-version")
    try:
        canonical: bytes | None = canonical_request(
            version=version,
            method=method,
            path=path,
            body_hash=body_hash,
            timestamp=timestamp,
            user_id=user_id,
            server_api_version=api_version,
        )
    except ValueError:
        canonical = None  # chef_authn crashes on a non-integer API version: a bad signature
    return SignedRequest(
        user_id=user_id,
        version=version,
        algorithm=algorithm,
        timestamp=timestamp,
        content_hash=h["x-ops-content-hash"],
        body_hash=body_hash,
        signature=signature,
        method=method.upper(),
        path=canonical_path(path),
        server_api_version=api_version,
        canonical=canonical,
    )


def check_time(req: SignedRequest, now: float, skew: float = DEFAULT_SKEW) -> None:
    """Step 2: 401 for an unparsable timestamp or one `skew` seconds or more from `now`."""
    _check_time(req.user_id, req.timestamp, now, skew)


def _verify_one(req: SignedRequest, key: RSAPublicKey, canonical: bytes) -> bool:
    try:
        if req.version in ("1.0", "1.1"):
            recovered = public_decrypt(key, req.signature)
            return recovered is not None and hmac.compare_digest(recovered, canonical)
        digest = hashes.SHA256() if req.version == "1.3" else hashes.SHA1()
        key.verify(req.signature, canonical, padding.PKCS1v15(), digest)
        return True
    except (InvalidSignature, ValueError, TypeError, AttributeError):
        return False


def verify_signature(req: SignedRequest, public_keys: Iterable[RSAPublicKey]) -> bool:
    """Step 3: True if the body matches X-Ops-Content-Hash and any key verifies."""
    if not req.content_hash_ok or req.canonical is None or not req.signature:
        return False
    return any(_verify_one(req, key, req.canonical) for key in public_keys)
