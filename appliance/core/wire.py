"""The ZeroMQ wire protocol shared by server and client: frames, headers, signatures, bodies.

Every application message is two frames, ``[header, body]``; the signature covers the exact
body bytes and nothing else (server-protocol.md §2). This module only transforms bytes: the
caller supplies keys and "now".
"""

from __future__ import annotations

import base64
import hmac
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from appliance.core.rsaraw import rsa_sha1_sign, rsa_sha1_verify

MAX_HEADER_BYTES = 2048
HMAC = "hmac_sha256"
RSA = "rsa2048_sha1"
PROTOCOL_VERSION = "2.0"
MAX_JOB_ID_BYTES = 64


class MessageError(ValueError):
    """A message that must be dropped; ``reason`` names the pipeline stage that refused it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Header:
    version: str | None
    method: str | None
    signature: str | None


def parse_header(raw: bytes) -> Header:
    """Split ``Name:value`` parts on ``;``; unknown parts are ignored, ``SignedChecksum`` is a synonym."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MessageError("bad_header", "not ASCII") from exc
    version = method = signature = None
    for part in text.split(";"):
        name, sep, value = part.partition(":")
        if not sep:
            continue
        if name == "Version":
            version = value
        elif name == "SigningMethod":
            method = value
        elif name in ("Signature", "SignedChecksum"):
            signature = value
    return Header(version, method, signature)


def format_header(method: str, signature: str) -> bytes:
    return f"Version:{PROTOCOL_VERSION};SigningMethod:{method};Signature:{signature}".encode(
        "ascii"
    )


def hmac_signature(key: bytes, body: bytes) -> str:
    return base64.b64encode(hmac.digest(key, body, "sha256")).decode("ascii")


def hmac_ok(key: bytes, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(
        hmac_signature(key, body).encode(), signature.encode("ascii", "replace")
    )


def encode_body(body: dict[str, Any]) -> bytes:
    """Compact JSON in insertion order, UTF-8 as is (what Ruby's JSON.generate writes)."""
    return orjson.dumps(body)


def decode_body(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MessageError("bad_json", str(exc)[:80]) from exc
    if not isinstance(value, dict):
        raise MessageError("bad_json", "body is not a JSON object")
    return value


def hmac_frames(key: bytes, body: dict[str, Any]) -> list[bytes]:
    raw = encode_body(body)
    return [format_header(HMAC, hmac_signature(key, raw)), raw]


def rsa_frames(key: RSAPrivateKey, body: dict[str, Any]) -> list[bytes]:
    raw = encode_body(body)
    return [format_header(RSA, rsa_sha1_sign(key, raw)), raw]


def http_date(t: float) -> str:
    """RFC 1123 date in GMT (floored to the second), as message ``timestamp`` fields carry it."""
    global _last_date
    second = math.floor(t)
    cached = _last_date  # one tuple: read whole, even beside a thread that replaces it
    if cached[0] != second:  # a job start dates 20,000 messages within the same second
        cached = _last_date = (second, formatdate(second, usegmt=True))
    return cached[1]


_last_date: tuple[int | None, str] = (None, "")


def parse_http_date(text: Any) -> float | None:
    """RFC 1123 (and the RFC 850 / asctime forms an HTTP-date parser accepts); None if unparsable."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    try:
        value = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if value is None:
        return None
    try:
        t = value.timestamp()
    except (OverflowError, ValueError, OSError):
        return None
    return t if math.isfinite(t) else None


def check_server_inbound(
    header_raw: bytes,
    body_raw: bytes,
    *,
    max_body: int,
    keys_for: Callable[[dict[str, Any]], Iterable[bytes]],
    now: float,
    max_skew: float,
) -> dict[str, Any]:
    """The server's validation pipeline: size → header → JSON → HMAC → timestamp window.

    ``keys_for(body)`` yields the session keys that may have signed this body (the current key
    and, during a rotation's grace period, the previous one). Clients can only sign with HMAC
    (server-protocol.md §2.3), and only under header Version 2.0.
    """
    if len(header_raw) > MAX_HEADER_BYTES:
        raise MessageError("bad_size", f"header of {len(header_raw)} bytes")
    if len(body_raw) > max_body:
        raise MessageError("bad_size", f"body of {len(body_raw)} bytes")
    header = parse_header(header_raw)
    if header.version != "2.0":
        raise MessageError("bad_header", f"version {header.version!r}")
    if header.method != HMAC:
        raise MessageError("bad_signature", f"signing method {header.method!r}")
    if not header.signature:
        raise MessageError("bad_signature", "no signature")
    body = decode_body(body_raw)
    if not any(hmac_ok(key, body_raw, header.signature) for key in keys_for(body)):
        raise MessageError("bad_signature", "HMAC mismatch")
    t = parse_http_date(body.get("timestamp"))
    if t is None:
        raise MessageError("bad_timestamp", "missing or unparsable")
    if not abs(now - t) < max_skew:
        raise MessageError("bad_timestamp", f"{now - t:+.0f} s off")
    return body


def check_client_inbound(
    header_raw: bytes,
    body_raw: bytes,
    *,
    session_key: bytes | None,
    server_public_key: RSAPublicKey | None,
    now: float,
    max_skew: float,
) -> dict[str, Any]:
    """The client's checks (client-knife.md §A.2): Version ignored, either method. The
    timestamp must be within ``max_skew`` of ``now`` both ways: the original refused only the
    future, so a recorded server message could be replayed at any later time (issue 7)."""
    header = parse_header(header_raw)
    if not header.signature:
        raise MessageError("bad_signature", "no signature")
    if header.method == HMAC and session_key is not None:
        ok = hmac_ok(session_key, body_raw, header.signature)
    elif header.method == RSA and server_public_key is not None:
        ok = rsa_sha1_verify(server_public_key, body_raw, header.signature)
    else:
        ok = False
    if not ok:
        raise MessageError("bad_signature", f"method {header.method!r}")
    body = decode_body(body_raw)
    t = parse_http_date(body.get("timestamp"))
    if t is None:
        raise MessageError("bad_timestamp", "missing or unparsable")
    if t - now > max_skew:
        raise MessageError("bad_timestamp", "from the future")
    if now - t > max_skew:
        raise MessageError("bad_timestamp", f"stale ({now - t:.0f} s old)")
    return body


def job_id_of(body: dict[str, Any]) -> str | None:
    """``null`` and ``"null"`` both mean no job; over-long or non-string ids never match a job."""
    value = body.get("job_id")
    if value is None or value == "null":
        return None
    if not isinstance(value, str) or len(value.encode("utf-8", "replace")) > MAX_JOB_ID_BYTES:
        return "\x00invalid"
    return value


def node_message(
    *,
    node: str,
    client: str | None,
    org: str,
    type: str,
    sequence: int,
    t: float,
    incarnation: str,
    job_id: str | None,
    job_state: str | None = None,
    stdout: str | None = None,
    stderr: str | None = None,
    **details: Any,
) -> dict[str, Any]:
    """A node → server message with the reference client's key order (client-knife.md §A.2):
    ``job_state`` only on heartbeats, ``stdout``/``stderr`` only when output was captured.
    ``details`` (our client only, beyond the original, last): a result's ``exit_status`` /
    ``signal`` or a refusal's ``reason`` (``NODE_DETAILS``), or an ``output`` message's
    chunk (``OUTPUT_FIELDS``, made by ``core.output.chunk_fields``)."""
    body: dict[str, Any] = {
        "node": node,
        "client": client,
        "protocol_version": PROTOCOL_VERSION,
        "org": org,
        "type": type,
        "sequence": sequence,
        "timestamp": http_date(t),
        "incarnation_id": incarnation,
    }
    if job_state is not None:
        body["job_state"] = job_state
    body["job_id"] = job_id
    if stdout is not None:
        body["stdout"] = stdout
    if stderr is not None:
        body["stderr"] = stderr
    unknown = details.keys() - NODE_DETAILS.keys() - OUTPUT_FIELDS
    if unknown:
        raise TypeError(f"node_message: unknown fields {sorted(unknown)}")
    body.update(details)
    return body


#: What our client adds to a job's result or refusal (beyond the original): field -> longest
#: string the server keeps (``exit_status`` is an integer).
NODE_DETAILS = {"exit_status": 0, "signal": 32, "reason": 1000}
#: An ``output`` message's own fields (our client only; ``core.output``).
OUTPUT_FIELDS = frozenset({"stream", "offset", "base64"})


def node_details(body: dict[str, Any]) -> dict[str, Any] | None:
    """The ``NODE_DETAILS`` a node message carries, each of the right type (strings cut to
    their length), or None when it carries none: what the server keeps of them."""
    found: dict[str, Any] = {}
    status = body.get("exit_status")
    if isinstance(status, int) and not isinstance(status, bool) and -(2**31) <= status < 2**31:
        found["exit_status"] = status
    for key in ("signal", "reason"):
        value = body.get(key)
        if isinstance(value, str) and value:
            found[key] = value[: NODE_DETAILS[key]]
    return found or None


def server_heartbeat(sequence: int, t: float, server: str, incarnation: str) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "timestamp": http_date(t),
        "server": server,
        "type": "heartbeat",
        "incarnation_id": incarnation,
    }


def server_message(sequence: int, t: float, body: dict[str, Any]) -> dict[str, Any]:
    """A server → node message: ``sequence`` and ``timestamp`` first, then the body's fields."""
    return {"sequence": sequence, "timestamp": http_date(t), **body}
