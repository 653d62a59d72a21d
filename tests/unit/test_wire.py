"""The wire codec: headers, HMAC (client-knife.md §A.2 vectors, byte-exact), the RSA "1.0"
heartbeat signature, and both validation pipelines (server-protocol.md §2, client-knife.md §A.2)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.core import wire
from appliance.core.rsaraw import hash_string, rsa_sha1_verify
from tests.unit.vectors import (
    INCARNATION,
    KEY,
    VECTOR_ABORTED,
    VECTOR_HEARTBEAT,
    VECTOR_SUCCEEDED,
    T,
)


def client_body(kind: str, sequence: int, **tail) -> dict:
    """A client message built by the shared builder (reference client key order, §A.2)."""
    return wire.node_message(
        node="node1",
        client="host1",
        org="myorg",
        type=kind,
        sequence=sequence,
        t=T,
        incarnation=INCARNATION,
        **tail,
    )


@pytest.fixture(scope="module")
def server_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# Test vectors --------------------------------------------------------------------------------
def test_heartbeat_vector_is_byte_exact():
    body = client_body("heartbeat", 1, job_state="idle", job_id=None)
    raw = wire.encode_body(body)
    assert raw == VECTOR_HEARTBEAT
    assert wire.hmac_signature(KEY, raw) == "7ito3LsF+G7RCJPkvEHnqk81R8w03uL6PfaKHOdMlgc="
    assert wire.hmac_frames(KEY, body) == [
        b"Version:2.0;SigningMethod:hmac_sha256;"
        b"Signature:7ito3LsF+G7RCJPkvEHnqk81R8w03uL6PfaKHOdMlgc=",
        VECTOR_HEARTBEAT,
    ]
    assert hash_string(raw) == b"98LG2ell5wHqqEU2nUnrrhJx568="


def test_succeeded_and_aborted_vectors_are_byte_exact():
    succeeded = client_body("succeeded", 2, job_id="abc123", stdout="out\n", stderr="")
    aborted = client_body("aborted", 3, job_id=None)
    assert wire.encode_body(succeeded) == VECTOR_SUCCEEDED
    assert wire.encode_body(aborted) == VECTOR_ABORTED
    assert (
        wire.hmac_signature(KEY, VECTOR_SUCCEEDED) == "qhmza9dFCGeUN9v1oLjFHC866yHeAy7zYso/L8+nu7A="
    )
    assert (
        wire.hmac_signature(KEY, VECTOR_ABORTED) == "aWm4zbOcraWtX2CwAVO8uPj0i/ygAv8j+MGbGxwDVYA="
    )


def test_http_date_is_rfc_1123_gmt_and_floors_to_the_second():
    assert wire.http_date(T) == "Wed, 21 Oct 2015 07:28:00 GMT"
    assert wire.http_date(T + 0.999) == "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.mark.parametrize(
    "text",
    [
        "Wed, 21 Oct 2015 07:28:00 GMT",  # RFC 1123
        "Wednesday, 21-Oct-15 07:28:00 GMT",  # RFC 850
        "Wed Oct 21 07:28:00 2015",  # asctime
    ],
)
def test_parse_http_date_accepts_the_http_date_forms(text):
    assert wire.parse_http_date(text) == T


@pytest.mark.parametrize("value", [None, 12, "", "yesterday", "Wed, 99 Foo 2015", "x" * 100])
def test_parse_http_date_rejects_other_values(value):
    assert wire.parse_http_date(value) is None


def test_encode_body_keeps_utf8_as_is():
    assert wire.encode_body({"stdout": "héllo ✓"}) == '{"stdout":"héllo ✓"}'.encode()


# Headers -------------------------------------------------------------------------------------
def test_parse_header_reads_the_three_parts():
    h = wire.parse_header(b"Version:2.0;SigningMethod:hmac_sha256;Signature:abc=")
    assert h == wire.Header("2.0", "hmac_sha256", "abc=")


def test_parse_header_in_any_order_with_unknown_parts():
    h = wire.parse_header(b"X-Extra:1;Signature:s;Junk;SigningMethod:m;Version:1.0;Other:a:b")
    assert h == wire.Header("1.0", "m", "s")


def test_signed_checksum_is_a_synonym_for_signature():
    assert wire.parse_header(b"Version:2.0;SignedChecksum:xyz").signature == "xyz"


def test_missing_parts_are_none():
    assert wire.parse_header(b"") == wire.Header(None, None, None)
    assert wire.parse_header(b"Version:2.0") == wire.Header("2.0", None, None)


def test_non_ascii_header_is_bad_header():
    with pytest.raises(wire.MessageError) as exc:
        wire.parse_header("Version:2.0;Signature:é".encode())
    assert exc.value.reason == "bad_header"


def test_format_header():
    assert wire.format_header("rsa2048_sha1", "QQ==") == (
        b"Version:2.0;SigningMethod:rsa2048_sha1;Signature:QQ=="
    )


# Server pipeline -----------------------------------------------------------------------------
def server_check(header: bytes, raw: bytes, *, now: float = T, keys=(KEY,), max_body=65536):
    return wire.check_server_inbound(
        header, raw, max_body=max_body, keys_for=lambda body: list(keys), now=now, max_skew=300
    )


def reason(header: bytes, raw: bytes, **kw) -> str:
    with pytest.raises(wire.MessageError) as exc:
        server_check(header, raw, **kw)
    return exc.value.reason


def hdr(raw: bytes, *, version="2.0", method="hmac_sha256", key=KEY, name="Signature") -> bytes:
    parts = [] if version is None else [f"Version:{version}"]
    parts += [f"SigningMethod:{method}", f"{name}:{wire.hmac_signature(key, raw)}"]
    return ";".join(parts).encode()


def test_server_accepts_the_vector():
    header, raw = wire.hmac_frames(KEY, client_body("heartbeat", 1, job_state="idle", job_id=None))
    assert server_check(header, raw)["type"] == "heartbeat"


@pytest.mark.parametrize("version", [None, "3.0", "1.0", "2", ""])
def test_server_refuses_any_version_but_2_0(version):
    assert reason(hdr(VECTOR_ABORTED, version=version), VECTOR_ABORTED) == "bad_header"


@pytest.mark.parametrize("method", ["rsa2048_sha1", "hmac_sha1", ""])
def test_server_verifies_only_hmac(method):
    assert reason(hdr(VECTOR_ABORTED, method=method), VECTOR_ABORTED) == "bad_signature"


def test_server_refuses_missing_or_wrong_signature():
    assert reason(b"Version:2.0;SigningMethod:hmac_sha256", VECTOR_ABORTED) == "bad_signature"
    assert reason(hdr(VECTOR_ABORTED, key=b"x" * 32), VECTOR_ABORTED) == "bad_signature"
    assert reason(hdr(VECTOR_ABORTED), VECTOR_ABORTED, keys=()) == "bad_signature"
    # A signature of another body does not carry over.
    assert reason(hdr(VECTOR_HEARTBEAT), VECTOR_ABORTED) == "bad_signature"


def test_server_accepts_signed_checksum_and_any_of_the_offered_keys():
    header = hdr(VECTOR_ABORTED, name="SignedChecksum")
    assert server_check(header, VECTOR_ABORTED)["type"] == "aborted"
    assert server_check(header, VECTOR_ABORTED, keys=(b"y" * 32, KEY))["type"] == "aborted"


def test_server_keys_are_looked_up_from_the_claimed_body():
    seen = []

    def keys_for(body):
        seen.append((body["org"], body["node"]))
        return [KEY]

    wire.check_server_inbound(
        hdr(VECTOR_ABORTED), VECTOR_ABORTED, max_body=65536, keys_for=keys_for, now=T, max_skew=300
    )
    assert seen == [("myorg", "node1")]


def test_server_size_limits_are_inclusive():
    header = hdr(VECTOR_ABORTED)
    padded = header + b";X-Pad:" + b"x" * (wire.MAX_HEADER_BYTES - len(header) - 7)
    assert len(padded) == wire.MAX_HEADER_BYTES
    assert server_check(padded, VECTOR_ABORTED)["type"] == "aborted"
    assert reason(padded + b"x", VECTOR_ABORTED) == "bad_size"
    n = len(VECTOR_ABORTED)
    assert server_check(header, VECTOR_ABORTED, max_body=n)["type"] == "aborted"
    assert reason(header, VECTOR_ABORTED, max_body=n - 1) == "bad_size"


@pytest.mark.parametrize("raw", [b"not json", b"", b"[1,2]", b'"x"', b"12", b"null", b"{"])
def test_server_refuses_non_object_json(raw):
    assert reason(hdr(raw), raw) == "bad_json"


@pytest.mark.parametrize("offset", [-299, 0, 299])
def test_server_accepts_timestamps_within_300_s(offset):
    assert server_check(hdr(VECTOR_ABORTED), VECTOR_ABORTED, now=T + offset)


@pytest.mark.parametrize("offset", [-300, 300, -1000, 86400])
def test_server_refuses_timestamps_300_s_or_more_away(offset):
    assert reason(hdr(VECTOR_ABORTED), VECTOR_ABORTED, now=T + offset) == "bad_timestamp"


@pytest.mark.parametrize("timestamp", [None, "soon", 1445412480, ""])
def test_server_refuses_missing_or_unparsable_timestamps(timestamp):
    body = client_body("aborted", 3, job_id=None)
    if timestamp is None:
        del body["timestamp"]
    else:
        body["timestamp"] = timestamp
    raw = wire.encode_body(body)
    assert reason(hdr(raw), raw) == "bad_timestamp"


def test_server_pipeline_order():
    """size → header → JSON → signature → timestamp: the first failing stage names the drop."""
    big = b"x" * 70000
    assert reason(b"Version:9", big) == "bad_size"
    assert reason(b"Version:9", b"not json") == "bad_header"
    assert reason(hdr(b"x", key=b"z" * 32), b"not json") == "bad_json"
    assert reason(hdr(VECTOR_ABORTED, key=b"z" * 32), VECTOR_ABORTED, now=T + 1e6) == (
        "bad_signature"
    )


# Client pipeline -----------------------------------------------------------------------------
def client_check(header: bytes, raw: bytes, *, now: float = T, public=None, key=KEY):
    return wire.check_client_inbound(
        header, raw, session_key=key, server_public_key=public, now=now, max_skew=300
    )


def client_reason(header: bytes, raw: bytes, **kw) -> str:
    with pytest.raises(wire.MessageError) as exc:
        client_check(header, raw, **kw)
    return exc.value.reason


ABORT = wire.encode_body(wire.server_message(4, T, {"type": "abort"}))


@pytest.mark.parametrize("version", [None, "9.9", "1.0", "2.0"])
def test_client_ignores_the_version(version):
    assert client_check(hdr(ABORT, version=version), ABORT)["type"] == "abort"


def test_client_checks_hmac_with_its_session_key():
    assert client_reason(hdr(ABORT, key=b"q" * 32), ABORT) == "bad_signature"
    assert client_reason(hdr(ABORT), ABORT, key=None) == "bad_signature"
    assert client_reason(b"Version:2.0;SigningMethod:hmac_sha256", ABORT) == "bad_signature"
    assert client_reason(hdr(ABORT, method="md5"), ABORT) == "bad_signature"


def test_client_checks_rsa_with_the_server_public_key(server_key):
    body = wire.server_heartbeat(7, T, "host", "inc")
    header, raw = wire.rsa_frames(server_key, body)
    public = server_key.public_key()
    assert client_check(header, raw, public=public, key=None) == body
    assert client_reason(header, raw, public=None) == "bad_signature"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    assert client_reason(header, raw, public=other) == "bad_signature"
    assert client_reason(header, raw + b" ", public=public) == "bad_signature"


def test_client_accepts_an_rsa_signature_wrapped_every_60_chars(server_key):
    """Ruby's Base64.encode64 puts a newline after every 60 characters (the last one removed)."""
    header, raw = wire.rsa_frames(server_key, wire.server_heartbeat(1, T, "h", "i"))
    sig = wire.parse_header(header).signature
    wrapped = "\n".join(sig[i : i + 60] for i in range(0, len(sig), 60))
    assert "\n" in wrapped and len(sig) == 344
    ruby = f"Version:2.0;SigningMethod:rsa2048_sha1;Signature:{wrapped}".encode()
    assert client_check(ruby, raw, public=server_key.public_key())["sequence"] == 1


def test_client_refuses_the_future_and_the_stale():
    """The original refused only the future (client-knife.md §A.2); issue 7 refuses a stale
    (possibly replayed) message too, with the same window the server applies to nodes."""
    assert client_check(hdr(ABORT), ABORT, now=T - 300)["type"] == "abort"  # 300 s ahead: ok
    assert client_check(hdr(ABORT), ABORT, now=T + 300)["type"] == "abort"  # 300 s old: ok
    assert client_reason(hdr(ABORT), ABORT, now=T - 301) == "bad_timestamp"
    assert client_reason(hdr(ABORT), ABORT, now=T + 301) == "bad_timestamp"
    assert client_reason(hdr(ABORT), ABORT, now=T + 10 * 86400) == "bad_timestamp"  # very old


def test_client_refuses_bad_json_and_missing_timestamp():
    assert client_reason(hdr(b"{]"), b"{]") == "bad_json"
    raw = b'{"type":"abort","sequence":1}'
    assert client_reason(hdr(raw), raw) == "bad_timestamp"


# RSA heartbeat signature, independent check ---------------------------------------------------
def test_rsa_frames_are_raw_pkcs1_type1_of_the_sha1_base64(server_key):
    header, raw = wire.rsa_frames(server_key, wire.server_heartbeat(0, T, "h", "i"))
    parsed = wire.parse_header(header)
    assert (parsed.version, parsed.method) == ("2.0", "rsa2048_sha1")
    sig = base64.b64decode(parsed.signature, validate=True)
    assert len(sig) == 256
    pub = server_key.public_key().public_numbers()
    block = pow(int.from_bytes(sig, "big"), pub.e, pub.n).to_bytes(256, "big")
    digest = base64.b64encode(hashlib.sha1(raw).digest())
    assert block == b"\x00\x01" + b"\xff" * (256 - 3 - 28) + b"\x00" + digest
    assert rsa_sha1_verify(server_key.public_key(), raw, parsed.signature)


# Message bodies ------------------------------------------------------------------------------
def test_server_heartbeat_key_order():
    body = wire.server_heartbeat(3, T, "myhost", "inc-1")
    assert list(body) == ["sequence", "timestamp", "server", "type", "incarnation_id"]
    assert json.loads(wire.encode_body(body)) == {
        "sequence": 3,
        "timestamp": "Wed, 21 Oct 2015 07:28:00 GMT",
        "server": "myhost",
        "type": "heartbeat",
        "incarnation_id": "inc-1",
    }


def test_server_message_puts_sequence_and_timestamp_first():
    body = wire.server_message(5, T, {"type": "run", "job_id": "j"})
    assert list(body) == ["sequence", "timestamp", "type", "job_id"]
    assert wire.encode_body(body) == (
        b'{"sequence":5,"timestamp":"Wed, 21 Oct 2015 07:28:00 GMT","type":"run","job_id":"j"}'
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("null", None), ("abc", "abc"), ("a" * 64, "a" * 64)],
)
def test_job_id_of_plain_values(value, expected):
    assert wire.job_id_of({"job_id": value}) == expected


@pytest.mark.parametrize("value", ["a" * 65, "é" * 33, 12, ["x"], {"a": 1}])
def test_job_id_of_invalid_values_never_match_a_job(value):
    got = wire.job_id_of({"job_id": value})
    assert got is not None and got != value


def test_job_id_of_missing_is_none():
    assert wire.job_id_of({}) is None
