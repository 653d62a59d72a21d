"""Limits end to end (issue 7): 1 MB request bodies, 100 KB job files, 64 KB node messages,
10,000-node jobs, many SSE and websocket readers at once, readers that never read.

The server is the real process; its memory and descriptors are read from /proc. Bounds in the
assertions are generous multiples of what the behaviour needs (memory bounded, not measured).
Regression tests: ``test_an_endless_body_is_refused_early_and_its_connection_cut`` (a 413 left
the connection open, draining the body forever), ``test_a_never_reading_sse_reader_is_dropped_
and_the_others_are_served`` and ``test_sigterm_with_never_reading_sse_and_ws_readers_exits``
(SSE had no stalled-reader cut-off: such a reader held its handler and hung the shutdown).
"""

from __future__ import annotations

import base64
import json
import socket
import time
from typing import Any

import httpx
import pytest
import trio

from appliance.core import wire
from tests.campaigns import clients
from tests.campaigns.clients import SseReader, open_stalled, rss_kb, tcp_send_queue
from tests.support import Server, WireNode, server_fixture, setup_org, wait_for

ORG = "limits"
TOO_BIG = {"error": "JSON must be no more than 1000000 bytes."}
LIMIT = 1_000_000
SETTINGS = {
    "heartbeat_interval": 200,
    "voting_timeout": 1.5,
    "wait_complete_time": 1,
    "keep_alive_time": 1,
    "log_level": "info",
}
MAX_BODY = 65536  # max_body_size's default
server = server_fixture("limits", **SETTINGS)


@pytest.fixture(scope="module")
def org(server) -> tuple[Any, dict[str, str]]:
    return setup_org(server, ORG, ("n1", "n2", "n3"))


@pytest.fixture(scope="module")
def admin(org):
    return org[0]


def jobs_path(org: str = ORG) -> str:
    return f"/organizations/{org}/pushy/jobs"


def padded(doc: dict[str, Any], size: int) -> bytes:
    """``doc`` as JSON, padded with trailing spaces to exactly ``size`` bytes."""
    raw = json.dumps(doc).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


def wait_job(admin, job_id: str, seconds: float = 30) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job = admin.get(f"{jobs_path()}/{job_id}").json()
        return job if job["status"] not in ("new", "voting", "running") else None

    return wait_for(ended, seconds, what=f"job {job_id} ended")


# ---------------------------------------------------------------------------------------------
# 1. request bodies


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_body_of_exactly_one_megabyte_is_read_and_one_byte_more_is_413(server, admin, method):
    if method == "POST":
        path, doc, ok = jobs_path(), {"command": "true", "nodes": ["absent"]}, 201
    else:
        r = admin.post(f"/organizations/{ORG}/groups", {"groupname": "big-put"})
        assert r.status_code in (201, 409), r.text
        path, ok = f"/organizations/{ORG}/groups/big-put", 200
        doc = {"users": [], "clients": ["n1"], "groups": []}
    r = admin.request(method, path, raw=padded(doc, LIMIT))
    assert r.status_code == ok, r.text
    r = admin.request(method, path, raw=padded(doc, LIMIT + 1))
    assert r.status_code == 413
    assert r.json() == TOO_BIG


def test_chunked_bodies_without_a_content_length_have_the_same_limit(server, admin):
    doc = {"command": "true", "nodes": ["absent"]}

    def post_chunked(body: bytes) -> httpx.Response:
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            **admin.headers("POST", jobs_path(), body),
        }
        chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
        return admin.http.post(jobs_path(), content=chunks, headers=headers)

    r = post_chunked(padded(doc, LIMIT))
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in r.request.headers
    assert r.status_code == 201, r.text
    r = post_chunked(padded(doc, LIMIT + 1))
    assert r.status_code == 413
    assert r.json() == TOO_BIG


def test_an_endless_body_is_refused_early_and_its_connection_cut(server, admin):
    """Regression: after a 413 the connection stayed open and the server read (and threw away)
    whatever the client kept sending, for as long as it sent. Now the 413 comes after about
    the first megabyte, memory does not grow with the body, and the connection is cut."""
    rss_before = rss_kb(server.proc.pid)
    sock = socket.create_connection(("127.0.0.1", server.ports["api_port"]))
    sock.settimeout(10)
    sock.sendall(
        f"POST {jobs_path()} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    chunk = b"x" * 65536
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    sent, answer, cut = 0, b"", None
    answered_at = None
    while sent < 50_000_000:  # 50 MB at most, paced at about 6 MB/s
        try:
            sock.sendall(frame)
        except OSError as exc:  # reset or broken pipe: the server cut the connection
            cut = exc
            break
        sent += len(chunk)
        time.sleep(0.01)
        sock.setblocking(False)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            data = None
        except OSError as exc:
            cut = exc
            break
        finally:
            sock.setblocking(True)
        if data == b"":
            cut = "end of stream"
            break
        if data:
            answer += data
            answered_at = answered_at or sent
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert answer.endswith(json.dumps(TOO_BIG, separators=(",", ":")).encode()), answer
    assert answered_at is not None and answered_at < 10_000_000, answered_at
    assert cut is not None, f"the server read all {sent} bytes without closing the connection"
    assert sent < 45_000_000, sent
    assert rss_kb(server.proc.pid) - rss_before < 30_000, "the body was buffered"


# ---------------------------------------------------------------------------------------------
# 2. job files


def test_job_file_limit_is_100000_decoded_bytes(server, admin):
    cases = [
        ("base64:" + base64.b64encode(b"\0" * 100_000).decode(), 201),
        ("base64:" + base64.b64encode(b"\0" * 100_001).decode(), 400),
        ("raw:" + "é" * 50_000, 201),  # 2 bytes each in UTF-8: exactly 100,000 bytes
        ("raw:" + "é" * 50_000 + "x", 400),
    ]
    for file, status in cases:
        r = admin.post(jobs_path(), {"command": "true", "nodes": ["absent"], "file": file})
        assert r.status_code == status, (file[:20], r.text)
        if status == 400:
            assert r.json() == {"error": "invalid file size (must be <= 100000 bytes)"}
        else:
            job = admin.get(f"{jobs_path()}/{r.json()['id']}?include_file=true").json()
            assert job["file"] == file


# ---------------------------------------------------------------------------------------------
# 3. node messages


def counters(server: Server) -> dict[str, dict[str, int]]:
    return httpx.get(f"{server.url}/pushy/_status?counters=true", timeout=10).json()["counters"]


def padded_message(node: WireNode, kind: str, size: int, **extra: Any) -> list[bytes]:
    """A signed message whose body is exactly ``size`` bytes (a padding field grows it)."""
    body = node.body(kind, **extra)
    body["pad"] = ""
    body["pad"] = "x" * (size - len(wire.encode_body(body)))
    raw = wire.encode_body(body)
    assert len(raw) == size
    return [wire.format_header(wire.HMAC, wire.hmac_signature(node.session_key, raw)), raw]


def joined(server, org, name: str, zctx) -> WireNode:
    node = WireNode(server, ORG, name, org[1][name], ctx=zctx)
    node.connect()
    node.join()
    return node


def test_node_message_size_limits_at_the_router(server, org, zctx):
    node = joined(server, org, "n1", zctx)
    try:
        before = counters(server)
        node.send_frames(padded_message(node, "heartbeat", MAX_BODY))  # exactly at the limit
        wait_for(
            lambda: (
                counters(server)["received"].get("heartbeat", 0)
                > before["received"].get("heartbeat", 0)
            ),
            what="the 64 KB heartbeat counted",
        )
        node.send_frames(padded_message(node, "heartbeat", MAX_BODY + 1))
        wait_for(
            lambda: (
                counters(server)["dropped"].get("bad_size", 0)
                == before["dropped"].get("bad_size", 0) + 1
            ),
            what="the oversized body dropped",
        )
        header, raw = wire.hmac_frames(node.session_key, node.body("heartbeat"))
        at_limit = header + b";Pad:" + b"x" * (wire.MAX_HEADER_BYTES - len(header) - 5)
        assert len(at_limit) == wire.MAX_HEADER_BYTES
        mid = counters(server)
        node.send_frames([at_limit, raw])
        node.send_frames([at_limit + b"x", raw])
        wait_for(
            lambda: (
                counters(server)["dropped"].get("bad_size", 0)
                == mid["dropped"].get("bad_size", 0) + 1
                and counters(server)["received"].get("heartbeat", 0)
                > mid["received"].get("heartbeat", 0)
            ),
            what="the 2048-byte header accepted, the 2049-byte one dropped",
        )
        # far beyond ZeroMQ's MAXMSGSIZE: the server drops the connection; the DEALER
        # reconnects and the server takes the node's next heartbeat on its new identity (§4.5)
        node.send_frames(padded_message(node, "heartbeat", 4 * MAX_BODY + 8192))
        acked = None
        deadline = time.monotonic() + 20
        while acked is None and time.monotonic() < deadline:
            node.send("heartbeat")
            acked = node.recv(0.2, types=("ack",))
        assert acked is not None, "the node was not taken back on its new connection"
        assert server.proc.poll() is None
        # the node is not harmed: it still runs a job end to end
        admin = org[0]
        node.wait_available()
        r = admin.post(jobs_path(), {"command": "true", "nodes": ["n1"]})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        commit = node.recv(10, types=("commit",))
        assert commit is not None and commit["job_id"] == job_id
        node.job_id, node.job_state = job_id, "committed"
        node.send("ack_commit", job_id=job_id)
        assert node.recv(10, types=("run",)) is not None
        node.job_state = "running"
        node.send("ack_run", job_id=job_id)
        node.send("succeeded", job_id=job_id)
        assert wait_job(admin, job_id)["nodes"] == {"succeeded": ["n1"]}
    finally:
        node.close()


def test_node_output_over_the_limit_is_dropped_and_a_trimmed_resend_is_kept(server, org, zctx):
    admin = org[0]
    node = joined(server, org, "n2", zctx)
    try:
        r = admin.post(jobs_path(), {"command": "true", "nodes": ["n2"], "capture_output": True})
        job_id = r.json()["id"]
        assert node.recv(10, types=("commit",)) is not None
        node.job_id, node.job_state = job_id, "committed"
        node.send("ack_commit", job_id=job_id)
        assert node.recv(10, types=("run",)) is not None
        node.job_state = "running"
        node.send("ack_run", job_id=job_id)
        before = counters(server)["dropped"].get("bad_size", 0)

        def succeeded(size: int) -> tuple[list[bytes], str]:
            body = node.body("succeeded", job_id=job_id, stdout="", stderr="err")
            body["stdout"] = "o" * (size - len(wire.encode_body(body)))
            raw = wire.encode_body(body)
            assert len(raw) == size
            header = wire.format_header(wire.HMAC, wire.hmac_signature(node.session_key, raw))
            return [header, raw], body["stdout"]

        too_big, _ = succeeded(MAX_BODY + 1)
        node.send_frames(too_big)
        wait_for(
            lambda: counters(server)["dropped"].get("bad_size", 0) == before + 1,
            what="the oversized output dropped",
        )
        assert admin.get(f"{jobs_path()}/{job_id}").json()["status"] == "running"
        fits, stdout = succeeded(MAX_BODY)  # as the client does: trimmed to fit, sent again
        node.send_frames(fits)
        assert wait_job(admin, job_id)["nodes"] == {"succeeded": ["n2"]}
        out = admin.get(
            f"{jobs_path()}/{job_id}/output/n2/stdout",
            headers={"Accept": "application/octet-stream"},
        )
        assert out.status_code == 200 and out.content == stdout.encode()
    finally:
        node.close()


# ---------------------------------------------------------------------------------------------
# 4. 10,000-node jobs


def test_a_10000_node_job_completes_and_lists_every_node(server, admin):
    names = [f"fleet-{i:05d}" for i in range(10_000)]
    r = admin.post(jobs_path(), {"command": "chef-client", "nodes": names})
    assert r.status_code == 201, r.text
    job = wait_job(admin, r.json()["id"])
    assert job["status"] == "quorum_failed"
    assert list(job["nodes"]) == ["unavailable"]
    assert sorted(job["nodes"]["unavailable"]) == names
    events = admin.sse(f"{jobs_path()}/{job['id']}".replace("/jobs/", "/job_status_feed/"))
    assert events[-1][0] in ("job_complete", "summary")


# ---------------------------------------------------------------------------------------------
# 5. many readers at once


async def test_200_sse_and_200_websocket_readers_all_get_every_job(server):
    report = await clients.campaign(server, sse=200, ws=200, events=15, org="manyreaders")
    print("\n".join(report.lines()))
    assert report.failures == []
    assert report.complete_readers == 400
    assert report.delivered == report.expected == 400 * 15
    # one socket per reader (give or take a descriptor the server closed meanwhile)
    assert report.fds["connected"] >= report.fds["before"] + 400 - 2
    assert report.fds["after close"] <= report.fds["before"] + 5  # ... all given back
    assert report.rss_kb["peak"] - report.rss_kb["before"] < 200_000


# ---------------------------------------------------------------------------------------------
# 6. readers that never read


async def test_a_never_reading_sse_reader_is_dropped_and_the_others_are_served(server):
    """Regression: SSE had no cut-off for a reader that stops reading. Now it is dropped once
    it is a whole buffer (1024 events) behind, with a log line; the others get everything."""
    admin, _ = await trio.to_thread.run_sync(lambda: setup_org(server, "stallorg", ()))
    path = "/organizations/stallorg/pushy/job_status_feed"
    pid = server.proc.pid
    index: dict[str, int] = {}
    fast = SseReader("fast")
    stalled = await trio.to_thread.run_sync(lambda: open_stalled(server, path))
    port = stalled.getsockname()[1]
    dropped = f"SSE reader 127.0.0.1:{port} of org stallorg's feed fell more than 1024 events"

    def post(command: str, k: int) -> None:
        r = admin.post(jobs_path("stallorg"), {"command": command, "nodes": [f"absent-{k}"]})
        assert r.status_code == 201, r.text
        index[r.json()["id"]] = k

    rss_before = rss_kb(pid)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fast.run, server, path, index)
        with trio.fail_after(20):
            while not fast.ready:
                await trio.sleep(0.01)
        big = "x" * 900_000
        for k in range(6):  # fill the never-reader's socket: the server's send to it stalls
            await trio.to_thread.run_sync(post, big, k)
        queued = await trio.to_thread.run_sync(
            lambda: wait_for(
                lambda: (tcp_send_queue(server.ports["api_port"], port) or 0) >= 8192,
                20,
                what="the server's sends to the never-reader pile up",
            )
        )
        assert queued
        k = 6
        while dropped not in server.log_path.read_text() and k < 700:  # 2 org events a job
            await trio.to_thread.run_sync(post, "true", k)
            k += 1
            fast.settle(index)
        await trio.to_thread.run_sync(
            lambda: wait_for(lambda: dropped in server.log_path.read_text(), 10, what="drop")
        )
        with trio.fail_after(30):
            while fast.count < len(index):
                fast.settle(index)
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert fast.duplicates == 0 and fast.ended is None
    assert rss_kb(pid) - rss_before < 100_000

    # the never-reader now reads: what was in flight, then the end of the stream
    def drain() -> bytes:
        stalled.settimeout(20)
        got = b""
        while not got.endswith(b"\r\n0\r\n\r\n"):
            data = stalled.recv(1 << 20)
            if not data:
                break
            got += data
        stalled.close()
        return got

    got = await trio.to_thread.run_sync(drain)
    assert got.startswith(b"HTTP/1.1 200"), got[:100]
    assert got.count(b"event: job_complete") < len(index)


async def test_sigterm_with_never_reading_sse_and_ws_readers_exits(tmp_path):
    """Regression: a never-reading SSE reader held its handler in a send that hypercorn does
    not let be cancelled, and SIGTERM never finished. Now such readers are cut off at shutdown
    (job feed, org feed and websocket), and the server exits 0."""
    with Server(tmp_path / "state", **{**SETTINGS, "wait_complete_time": 60}) as srv:
        admin, _ = await trio.to_thread.run_sync(lambda: setup_org(srv, "stop", ()))
        big = {"command": "x" * 900_000, "nodes": ["absent"]}
        feed = "/organizations/stop/pushy/job_status_feed"
        socks = [await trio.to_thread.run_sync(lambda: open_stalled(srv, feed))]
        socks.append(clients._open_stalled_ws(srv, "/organizations/stop/pushy/ws"))
        job_ids = []
        for _ in range(6):
            r = await trio.to_thread.run_sync(lambda: admin.post(jobs_path("stop"), big))
            assert r.status_code == 201, r.text
            job_ids.append(r.json()["id"])
        # a job feed whose first chunk (the 900 KB start event) alone fills the socket
        socks.append(
            await trio.to_thread.run_sync(lambda: open_stalled(srv, f"{feed}/{job_ids[0]}"))
        )
        api = srv.ports["api_port"]
        for sock in socks:
            port = sock.getsockname()[1]
            await trio.to_thread.run_sync(
                lambda port=port: wait_for(
                    lambda: (tcp_send_queue(api, port) or 0) >= 8192,
                    20,
                    what=f"the server's sends to reader {port} pile up",
                )
            )
        srv.proc.terminate()
        status = await trio.to_thread.run_sync(lambda: srv.proc.wait(30))
        for sock in socks:
            sock.close()
        log = srv.log()
        assert status == 0, log
        assert "pushy server stopped" in log
        assert log.count("has read nothing for") >= 3, log
