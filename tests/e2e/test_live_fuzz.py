"""Live fuzzing of the real server's ZeroMQ ports: the CI slice of tests/campaigns/fuzz_wire.py.

A real ``pushy client`` node heartbeats and runs jobs while CURVE-authenticated DEALERs (keys
from a real config fetch), a DEALER without CURVE, raw TCP on both ports and SUB/XSUB peers
send random messages; the server must stay up, answer, keep the node online and finish a job
afterwards. Plus the regression test of the heartbeat port's subscription bound.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq

from appliance.core import wire
from tests.campaigns import fuzz_wire
from tests.support import Server, server_fixture, setup_org

xpub_server = server_fixture("live-fuzz-xpub", heartbeat_interval=100)


def test_live_fuzz_slice_keeps_the_server_and_its_node_serving(tmp_path: Path):
    report = fuzz_wire.run_live(5000, seed=20240611, workdir=tmp_path)
    assert report.failures == []
    assert report.inputs == 5000
    channels = report.by_channel
    assert set(channels) == {
        "curve_dealer",
        "plain_dealer",
        "plain_dealer_handshakes",
        "xsub",
        "sub",
        "raw_tcp_command",
        "raw_tcp_pub",
        "zmtp_sub",
    }, channels
    # past CURVE and the signature check: node messages reached the node and job code
    assert sum(report.received.values()) > 100, report.received
    assert {"bad_json", "bad_signature", "bad_header", "bad_frames"} <= set(report.dropped_reasons)
    assert report.replies > 0
    assert report.jobs_during >= 1 and report.final_job == "complete"
    assert report.availability_checks > 0


def _rss_kb(server: Server) -> int:
    return fuzz_wire._rss_kb(server.proc.pid)


def test_subscriptions_from_anyone_do_not_grow_the_server(xpub_server: Server):
    """Bug found by this fuzz: the heartbeat port (no CURVE: anyone may connect) was a PUB
    socket, and libzmq keeps each distinct subscription in a trie at ~47 bytes per topic byte:
    one 50 MB subscription grew a PUB to 2.3 GB, five made the server 8 GB and stopped it
    answering. Now it is an XPUB in manual mode that honours only topics matching the
    heartbeat, with a 256-byte limit on what peers may send it."""
    port = xpub_server.ports["server_heartbeat_port"]
    before = _rss_kb(xpub_server)
    conn = fuzz_wire.zmtp_subscriber(port)
    try:
        frames = b"".join(fuzz_wire.zmtp_frame(b"\x01" + os.urandom(200)) for _ in range(20_000))
        conn.sendall(frames)  # 20,000 distinct 200-byte topics
    finally:
        conn.close()
    for i in range(3):  # 5 MB topics: the connection is closed at the frame's header now
        conn = fuzz_wire.zmtp_subscriber(port)
        try:
            conn.sendall(fuzz_wire.zmtp_frame(b"\x01" + bytes([i]) * 5_000_000))
        except OSError:
            pass  # closed by the server while we were still sending
        finally:
            conn.close()
    ctx = zmq.Context()
    try:  # a real subscriber still gets the signed heartbeat, and the server answers
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{port}")
        assert sub.poll(10_000), xpub_server.log()
        assert wire.parse_header(sub.recv_multipart()[0]).method == wire.RSA
    finally:
        ctx.destroy(linger=0)
    assert xpub_server.status()["status"] == "it's alive"
    grown = _rss_kb(xpub_server) - before
    assert grown < 64_000, f"the server grew by {grown} kB"


def test_heartbeat_subscriptions_by_prefix_are_still_honoured(xpub_server: Server):
    """The bound keeps what a subscriber may rightly ask for: "" (what nodes send) or any
    prefix of the heartbeat's header; other topics get nothing."""
    setup_org(xpub_server, "prefixorg", ())
    ctx = zmq.Context()
    try:
        port = xpub_server.ports["server_heartbeat_port"]
        subs = {}
        for topic in (b"", b"Version:2.0;", b"Version:2.0;SigningMethod:rsa2048_sha1", b"x"):
            sub = ctx.socket(zmq.SUB)
            sub.linger = 0
            sub.setsockopt(zmq.SUBSCRIBE, topic)
            sub.connect(f"tcp://127.0.0.1:{port}")
            subs[topic] = sub
        for topic, sub in subs.items():
            if topic != b"x":
                assert sub.poll(10_000), topic
        # by now several heartbeats went out; the unmatched topic received none of them
        assert not subs[b"x"].poll(500)
    finally:
        ctx.destroy(linger=0)
