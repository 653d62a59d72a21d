"""The ZeroMQ side end to end: the signed server heartbeat, CURVE/ZAP, and the validation pipeline.

Real sockets against the real server process (server-protocol.md §2, §3, §10.2 "Wire and crypto",
"CURVE", "Message validation"). A dropped message is recognised by the server's log line for
its pipeline stage, then by the absence of any reply; every check ends by showing that the
server still serves a real node (heartbeat → abort).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import zmq
import zmq.utils.monitor

from appliance.core import wire
from appliance.core.keys import load_public_pem
from tests.support import (
    Chef,
    Server,
    WireNode,
    connect_bounded,
    server_fixture,
    setup_org,
    wait_for,
)

INTERVAL_MS = 200
HEADER_RE = re.compile(r"^Version:2\.0;SigningMethod:rsa2048_sha1;Signature:([A-Za-z0-9+/]+=*)$")
RFC1123_RE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d\d:\d\d:\d\d GMT$"
)
HANDSHAKE_EVENTS = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "ok",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "denied",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed",
}


# Helpers -------------------------------------------------------------------------------------
def drop_count(server: Server, reason: str) -> int:
    text = server.log_path.read_text(errors="replace")
    return text.count(f"dropped a node message ({reason})")


def fsm_count(server: Server) -> int:
    return server.status()["node_fsm_count"]


def node_state(admin: Chef, org: str, name: str) -> dict:
    r = admin.get(f"/organizations/{org}/pushy/node_states/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def verify_rsa_sha1(public_pem: str, body: bytes, signature_b64: str) -> bool:
    """An independent check of the original's heartbeat signature: raw PKCS#1 type-1 public
    decrypt of the signature must give exactly base64(SHA-1(body))."""
    numbers = load_public_pem(public_pem).public_numbers()
    k = (numbers.n.bit_length() + 7) // 8
    sig = base64.b64decode(signature_b64, validate=True)
    if len(sig) != k:
        return False
    block = pow(int.from_bytes(sig, "big"), numbers.e, numbers.n).to_bytes(k, "big")
    expected = base64.b64encode(hashlib.sha1(body).digest())
    padding = b"\x00\x01" + b"\xff" * (k - 3 - len(expected)) + b"\x00"
    return block == padding + expected


def signed(key: bytes, raw: bytes) -> str:
    return base64.b64encode(hmac.new(key, raw, hashlib.sha256).digest()).decode()


def handshake(
    ctx: zmq.Context, node: WireNode, public: bytes, secret: bytes, timeout: float = 5.0
) -> tuple[str, zmq.Socket]:
    """Connect a CURVE DEALER with the given client keypair; the first handshake outcome."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndtimeo = 2000  # a denied peer has no pipe: a send would block for ever
    sock.curve_serverkey = node.config["curve_public_key"].encode()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    monitor = sock.get_monitor_socket(sum(HANDSHAKE_EVENTS))
    try:
        sock.connect(node.config["push_jobs"]["heartbeat"]["command_addr"])
        if not monitor.poll(int(timeout * 1000)):
            return "timeout", sock
        event = zmq.utils.monitor.recv_monitor_message(monitor)
        return HANDSHAKE_EVENTS.get(event["event"], str(event["event"])), sock
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


def assert_handshake(
    ctx: zmq.Context, node: WireNode, expected: str, keys: tuple[bytes, bytes] | None = None
) -> None:
    """Handshake with ``keys`` (default the node's own) and hang up: the outcome must be
    ``expected``."""
    public, secret = keys or (node.curve_public, node.curve_secret)
    outcome, sock = handshake(ctx, node, public, secret)
    sock.close(linger=0)
    assert outcome == expected, outcome


def abort_seq_1(node: WireNode, server: Server) -> None:
    """A valid heartbeat from this node creates its FSM: the reply is the first ``abort``."""
    node.send("heartbeat")
    msg = node.recv(5, types=("abort", "ack"))
    assert msg is not None, server.log()
    assert msg["type"] == "abort" and msg["sequence"] == 1, msg


# Heartbeat and CURVE server ------------------------------------------------------------------
hb_server = server_fixture("wire-hb", heartbeat_interval=INTERVAL_MS)


@pytest.fixture(scope="module")
def hb_org(hb_server):
    names = ("hb1", "cv1", "cv2", "cv3", "cv4")
    return setup_org(hb_server, "wireorg", names)


def test_server_heartbeat_is_signed_ordered_and_periodic(hb_server, hb_org, zctx):
    _, keys = hb_org
    node = WireNode(hb_server, "wireorg", "hb1", keys["hb1"], ctx=zctx)
    assert node.fetch_config().status_code == 200
    incarnation = hb_server.status()["incarnation_id"]
    sub = zctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(node.config["push_jobs"]["heartbeat"]["out_addr"])
    assert sub.poll(10_000), "no server heartbeat at all"
    sub.recv_multipart()  # the subscription is live from here on
    started = time.monotonic()
    beats = []
    for _ in range(5):
        assert sub.poll(5_000), hb_server.log()
        beats.append(sub.recv_multipart())
    elapsed = time.monotonic() - started
    assert elapsed < 5 * INTERVAL_MS / 1000 + 5.0, elapsed  # a generous bound, not a timing test

    sequences = []
    for frames in beats:
        assert len(frames) == 2, frames
        header, body = frames
        m = HEADER_RE.match(header.decode("ascii"))
        assert m, header
        assert verify_rsa_sha1(node.config["public_key"], body, m.group(1))
        assert not verify_rsa_sha1(node.config["public_key"], body + b" ", m.group(1))
        pairs = json.loads(body, object_pairs_hook=list)
        assert [k for k, _ in pairs] == [
            "sequence",
            "timestamp",
            "server",
            "type",
            "incarnation_id",
        ]
        msg = dict(pairs)
        assert msg["type"] == "heartbeat"
        assert msg["incarnation_id"] == incarnation
        assert msg["server"] == socket.gethostname().split(".")[0]
        assert RFC1123_RE.match(msg["timestamp"]), msg
        assert isinstance(msg["sequence"], int)
        sequences.append(msg["sequence"])
    assert sequences == list(range(sequences[0], sequences[0] + 5)), sequences
    sub.close(linger=0)


def test_curve_key_never_sent_as_ccpk_gets_no_traffic(hb_server, hb_org, zctx):
    admin, keys = hb_org
    node = WireNode(hb_server, "wireorg", "cv1", keys["cv1"], ctx=zctx)
    assert node.fetch_config().status_code == 200
    stranger_public, stranger_secret = zmq.curve_keypair()
    outcome, sock = handshake(zctx, node, stranger_public, stranger_secret)
    assert outcome == "denied", outcome
    # A correctly signed heartbeat over that socket never reaches the server: no abort.
    try:
        sock.send_multipart(wire.hmac_frames(node.session_key, node.body("heartbeat")))
    except zmq.Again:
        pass  # not even queued: there is no connection to queue it on
    assert not sock.poll(1500)
    assert node_state(admin, "wireorg", "cv1")["status"] == "offline"
    sock.close(linger=0)

    # The key that was sent as ccpk in the authenticated fetch handshakes: heartbeat → abort.
    assert_handshake(zctx, node, "ok")
    connect_bounded(node)
    abort_seq_1(node, hb_server)
    node.close()


def test_newer_fetch_replaces_the_allowed_curve_key(hb_server, hb_org, zctx):
    _, keys = hb_org
    node = WireNode(hb_server, "wireorg", "cv2", keys["cv2"], ctx=zctx)
    assert node.fetch_config().status_code == 200
    old_public, old_secret = node.curve_public, node.curve_secret
    assert_handshake(zctx, node, "ok", (old_public, old_secret))

    node.curve_public, node.curve_secret = zmq.curve_keypair()
    assert node.fetch_config().status_code == 200
    outcome, sock = handshake(zctx, node, old_public, old_secret)
    assert outcome == "denied", f"the replaced key still handshakes on a new connection: {outcome}"
    sock.close(linger=0)
    assert_handshake(zctx, node, "ok")
    connect_bounded(node)
    abort_seq_1(node, hb_server)
    node.close()


def test_deleting_the_client_removes_its_curve_key(hb_server, hb_org, zctx):
    admin, keys = hb_org
    node = WireNode(hb_server, "wireorg", "cv3", keys["cv3"], ctx=zctx)
    assert node.fetch_config().status_code == 200
    assert_handshake(zctx, node, "ok")
    r = admin.delete("/organizations/wireorg/clients/cv3")
    assert r.status_code == 200, r.text
    assert_handshake(zctx, node, "denied")


def test_fetched_curve_key_is_kept_durably_across_a_restart(tmp_path, zctx):
    """DESIGN: the allow-list is each node's latest authenticated ccpk, with no 60 s expiry and
    kept in the log; a key fetched before a restart still handshakes after it."""
    with Server(tmp_path / "state", heartbeat_interval=INTERVAL_MS) as srv:
        _, keys = setup_org(srv, "durable", ("d1",))
        node = WireNode(srv, "durable", "d1", keys["d1"], ctx=zctx)
        assert node.fetch_config().status_code == 200
        assert srv.stop() == 0, srv.log()
        srv.settings.update(
            command_port=srv.ports["command_port"],
            server_heartbeat_port=srv.ports["server_heartbeat_port"],
        )
        srv.start()
        outcome, sock = handshake(zctx, node, node.curve_public, node.curve_secret)
        assert outcome == "ok", f"{outcome}\n{srv.log()}"
        sock.close(linger=0)
        connect_bounded(node)  # no new config fetch: the old ccpk and session key
        abort_seq_1(node, srv)
        node.close()


# Validation pipeline -------------------------------------------------------------------------
val_server = server_fixture("wire-val", heartbeat_interval=INTERVAL_MS)


@pytest.fixture(scope="module")
def val_org(val_server):
    admin, _ = setup_org(val_server, "valorg", ())
    r = admin.post("/organizations", {"name": "otherorg", "full_name": "otherorg"})
    assert r.status_code == 201, r.text
    return admin


@pytest.fixture
def fresh(val_server, val_org, zctx) -> Iterator[WireNode]:
    """A node that fetched its config and connected over CURVE but has sent nothing yet."""
    name = f"n-{uuid.uuid4().hex[:10]}"
    r = val_org.post("/organizations/valorg/clients", {"name": name, "create_key": True})
    assert r.status_code == 201, r.text
    node = WireNode(val_server, "valorg", name, r.json()["chef_key"]["private_key"], ctx=zctx)
    connect_bounded(node)
    yield node
    node.close()
    val_org.delete(f"/organizations/valorg/clients/{name}")  # node_fsm_count back to 0


def _frames(n: WireNode, /, **override) -> tuple[dict, bytes]:
    body = n.body("heartbeat")
    body.update(override)
    return body, wire.encode_body(body)


def _header(signature: str, *, version: str | None = "2.0", method: str = "hmac_sha256") -> bytes:
    parts = [] if version is None else [f"Version:{version}"]
    parts += [f"SigningMethod:{method}", f"Signature:{signature}"]
    return ";".join(parts).encode()


def _no_version(n: WireNode) -> list[bytes]:
    _, raw = _frames(n)
    return [_header(signed(n.session_key, raw), version=None), raw]


def _version(v: str):
    def build(n: WireNode) -> list[bytes]:
        _, raw = _frames(n)
        return [_header(signed(n.session_key, raw), version=v), raw]

    return build


def _long_header(n: WireNode) -> list[bytes]:
    _, raw = _frames(n)
    header = _header(signed(n.session_key, raw)) + b";X-Pad:"
    return [header + b"x" * (wire.MAX_HEADER_BYTES + 1 - len(header)), raw]


def _sized_body(n: WireNode, size: int) -> list[bytes]:
    body, raw = _frames(n, pad="")
    body["pad"] = "x" * (size - len(raw))
    raw = wire.encode_body(body)
    assert len(raw) == size
    return [_header(signed(n.session_key, raw)), raw]


def _wrong_hmac(n: WireNode) -> list[bytes]:
    _, raw = _frames(n)
    return [_header(signed(b"k" * 32, raw)), raw]


def _raw_body(raw: bytes):
    def build(n: WireNode) -> list[bytes]:
        return [_header(signed(n.session_key, raw)), raw]

    return build


def _timestamp(offset: float | None, text: str | None = None):
    def build(n: WireNode) -> list[bytes]:
        body = n.body("heartbeat")
        if offset is None and text is None:
            del body["timestamp"]
        else:
            body["timestamp"] = text or wire.http_date(time.time() + offset)
        raw = wire.encode_body(body)
        return [_header(signed(n.session_key, raw)), raw]

    return build


def _claims(**override):
    def build(n: WireNode) -> list[bytes]:
        _, raw = _frames(n, **override)
        return [_header(signed(n.session_key, raw)), raw]

    return build


def _rsa_method(n: WireNode) -> list[bytes]:
    _, raw = _frames(n)
    return [_header(signed(n.session_key, raw), method="rsa2048_sha1"), raw]


def _one_frame(n: WireNode) -> list[bytes]:
    return [wire.hmac_frames(n.session_key, n.body("heartbeat"))[1]]


def _three_frames(n: WireNode) -> list[bytes]:
    return [*wire.hmac_frames(n.session_key, n.body("heartbeat")), b""]


INVALID = {
    "header without Version": (_no_version, "bad_header"),
    "Version 3.0": (_version("3.0"), "bad_header"),
    "Version 1.0 with hmac": (_version("1.0"), "bad_header"),
    "header over 2048 bytes": (_long_header, "bad_size"),
    "body over 65536 bytes": (lambda n: _sized_body(n, 65537), "bad_size"),
    "wrong HMAC": (_wrong_hmac, "bad_signature"),
    "RSA-signed client message": (_rsa_method, "bad_signature"),
    "non-JSON body": (_raw_body(b"this is not json"), "bad_json"),
    "JSON array body": (_raw_body(b'["heartbeat"]'), "bad_json"),
    "JSON string body": (_raw_body(b'"heartbeat"'), "bad_json"),
    "timestamp 300 s old": (_timestamp(-300), "bad_timestamp"),
    # The date has 1 s resolution (floored): +302 s is still 300 s or more ahead on arrival.
    "timestamp 302 s ahead": (_timestamp(+302), "bad_timestamp"),
    "timestamp 1000 s old": (_timestamp(-1000), "bad_timestamp"),
    "missing timestamp": (_timestamp(None), "bad_timestamp"),
    "unparsable timestamp": (_timestamp(0, "yesterday at noon"), "bad_timestamp"),
    "one frame": (_one_frame, "bad_frames"),
    "three frames": (_three_frames, "bad_frames"),
    "unknown org": (_claims(org="no-such-org"), "bad_signature"),
    "another org's name": (_claims(org="otherorg"), "bad_signature"),
    "unknown type": (_claims(type="reconfigure"), "bad_type"),
    "missing type": (_claims(type=None), "bad_type"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_message_is_dropped_without_state(case, val_server, val_org, fresh):
    build, reason = INVALID[case]
    before = drop_count(val_server, reason)
    fresh.send_frames(build(fresh))
    wait_for(
        lambda: drop_count(val_server, reason) > before,
        what=f"a {reason} drop in the log\n{val_server.log()}",
    )
    assert not fresh.dealer.poll(300), fresh.dealer.recv_multipart()
    assert node_state(val_org, "valorg", fresh.name)["status"] == "offline"
    assert fsm_count(val_server) == 0  # DESIGN: nothing is created before a message validates
    abort_seq_1(fresh, val_server)


def test_message_claiming_another_node_is_dropped(val_server, val_org, fresh, zctx):
    r = val_org.post("/organizations/valorg/clients", {"name": "victim", "create_key": True})
    assert r.status_code == 201, r.text
    victim = WireNode(val_server, "valorg", "victim", r.json()["chef_key"]["private_key"], ctx=zctx)
    try:
        assert victim.fetch_config().status_code == 200  # the victim has a session key
        before = drop_count(val_server, "bad_signature")
        fresh.send_frames(_claims(node="victim")(fresh))
        wait_for(lambda: drop_count(val_server, "bad_signature") > before, what="a drop")
        assert not fresh.dealer.poll(300)
        assert node_state(val_org, "valorg", "victim")["status"] == "offline"
        assert node_state(val_org, "valorg", fresh.name)["status"] == "offline"
        assert fsm_count(val_server) == 0
        abort_seq_1(fresh, val_server)
    finally:
        val_org.delete("/organizations/valorg/clients/victim")


def _header_of_exactly_2048(n: WireNode) -> list[bytes]:
    _, raw = _frames(n)
    header = b"X-Before:1;" + _header(signed(n.session_key, raw)) + b";X-Pad:"
    header += b"x" * (wire.MAX_HEADER_BYTES - len(header))
    assert len(header) == wire.MAX_HEADER_BYTES
    return [header, raw]


def _signed_checksum(n: WireNode) -> list[bytes]:
    _, raw = _frames(n)
    sig = signed(n.session_key, raw)
    return [f"Version:2.0;SigningMethod:hmac_sha256;SignedChecksum:{sig}".encode(), raw]


VALID = {
    "unknown header parts, header of exactly 2048 bytes": _header_of_exactly_2048,
    "SignedChecksum instead of Signature": _signed_checksum,
    "body of exactly 65536 bytes": lambda n: _sized_body(n, 65536),
    "timestamp 290 s old": _timestamp(-290),
    "timestamp 290 s ahead": _timestamp(+290),
    # §10.1 #1, kept: sequence numbers are not checked (CURVE and the time window protect).
    "sequence far ahead": _claims(sequence=10_000),
    "null sequence": _claims(sequence=None),
    "RFC 850 timestamp": lambda n: _timestamp(
        0, time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime())
    )(n),
    "asctime timestamp": lambda n: _timestamp(
        0, time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime())
    )(n),
}


@pytest.mark.parametrize("case", list(VALID))
def test_edge_valid_message_is_accepted(case, val_server, val_org, fresh):
    fresh.send_frames(VALID[case](fresh))
    msg = fresh.recv(5)
    assert msg is not None, val_server.log()
    assert msg["type"] == "abort" and msg["sequence"] == 1, msg
    assert node_state(val_org, "valorg", fresh.name) == {
        "node_name": fresh.name,
        "status": "online",
        "availability": "unavailable",
    }


def _raw_tcp_junk(port: int, rng: random.Random) -> None:
    for payload in (
        rng.randbytes(4096),
        b"\xff" + b"\x00" * 8 + b"\x7f" + rng.randbytes(200),  # a ZMTP signature, then junk
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00CURVE" + b"\x00" * 15 + b"\x00" * 32 + b"\x00" * 64,
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            try:
                conn.sendall(payload)
                conn.settimeout(0.2)
                conn.recv(1024)
            except OSError:
                pass


def test_garbage_on_both_ports_does_not_disturb_the_server(val_server, val_org, fresh, zctx):
    rng = random.Random(20240611)
    command, pub = val_server.ports["command_port"], val_server.ports["server_heartbeat_port"]
    for port in (command, pub):
        _raw_tcp_junk(port, rng)
    # ZMTP peers without CURVE, on both ports.
    for port in (command, pub):
        plain = zctx.socket(zmq.DEALER)
        plain.linger = 0
        plain.sndtimeo = 2000
        plain.connect(f"tcp://127.0.0.1:{port}")
        for _ in range(20):
            try:
                plain.send_multipart([rng.randbytes(rng.randrange(0, 300)) for _ in range(2)])
            except zmq.Again:
                break  # refused at the handshake: nothing can be queued
        assert not plain.poll(300)
        plain.close(linger=0)
    # An authenticated CURVE peer sending random frames, many frames, empty frames.
    for _ in range(100):
        fresh.send_frames(
            [rng.randbytes(rng.randrange(0, 400)) for _ in range(rng.randrange(1, 6))]
        )
    fresh.send_frames([b"x"] * 200)
    fresh.send_frames([b"", b""])
    fresh.send_frames([b""])
    assert not fresh.dealer.poll(500)
    assert fsm_count(val_server) == 0
    # A frame over the socket's size limit gets the connection closed; it reconnects by itself.
    fresh.send_frames([b"Version:2.0", rng.randbytes(300_000)])

    status = val_server.status()
    assert status["status"] == "it's alive" and status["node_fsm_count"] == 0
    fresh.join()  # heartbeats (over the re-established connection) until the first abort
    assert fsm_count(val_server) == 1
    frames, beat = fresh.recv_heartbeat(5) or (None, None)
    assert beat is not None and beat["type"] == "heartbeat"
    wait_for(
        lambda: node_state(val_org, "valorg", fresh.name)["availability"] == "available",
        what="the real node available after the garbage",
    )
    assert val_server.proc.poll() is None
