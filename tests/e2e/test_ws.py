"""The websocket status stream (``/organizations/ORG/pushy/ws``) and ``pushy watch``, end to end.

A real server, real ``pushy client`` processes, trio-websocket as the client library (as the
CLI uses it), and the CLI as a subprocess. Covered: the hello snapshot; a job's events in order
with its id, the org feed's events; node availability changes (a client that starts, one that
is killed); subscription filtering (jobs and nodes) with the replay of a named live job; bad
client messages; keepalives; handshake authentication with the REST routes' statuses and
bodies; a reader that never reads is dropped while others are served; server shutdown closes
the stream; ``pushy watch`` as JSON lines, plain lines, ``--once`` and its auth-failure exit.
"""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from appliance.core.keys import generate_rsa, load_private_pem, private_pem
from tests.support import (
    REPO,
    ClientFleet,
    Server,
    new_user,
    set_group,
    setup_org,
    sign,
    wait_for,
)

ORG = "wsorg"
KEEP_ALIVE = 1.0
WHITELIST = "{'ok'=>'true', 'slow'=>'sleep 1', 'talk'=>'echo hello; sleep 0.5; echo bye >&2'}"
SETTINGS = {
    "heartbeat_interval": 100,
    "keep_alive_time": KEEP_ALIVE,
    "voting_timeout": 2,
    "wait_complete_time": 1,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Any:
    with Server(tmp_path_factory.mktemp("ws") / "state", **SETTINGS) as srv:
        yield srv


@pytest.fixture(scope="module")
def fleet(server, tmp_path_factory) -> Any:
    f = ClientFleet(server, ORG, tmp_path_factory.mktemp("wsclients"))
    try:
        f.add("w1", whitelist=WHITELIST)
        f.wait_available("w1")
        yield f
    finally:
        f.close()


def ws_path(org: str = ORG) -> str:
    return f"/organizations/{org}/pushy/ws"


def headers_for(server: Server, path: str, user: str = "pivotal", key: Any = None) -> list:
    key = key if key is not None else server.pivotal_key.read_bytes()
    return [(k.encode(), v.encode()) for k, v in sign(key, user, "GET", path).items()]


@asynccontextmanager
async def stream(
    server: Server, org: str = ORG, *, subscribe: dict | None = None
) -> AsyncIterator[tuple[WebSocketConnection, dict]]:
    """An open stream and its hello; with ``subscribe``, sent and acknowledged first."""
    path = ws_path(org)
    url = server.url.replace("http://", "ws://") + path
    async with open_websocket_url(url, extra_headers=headers_for(server, path)) as ws:
        hello = await receive(ws)
        assert hello["type"] == "hello", hello
        if subscribe is not None:
            await ws.send_message(json.dumps({"subscribe": subscribe}))
            await until(ws, lambda m: m["type"] == "subscribed")
        yield ws, hello


async def receive(ws: WebSocketConnection, seconds: float = 10) -> dict:
    with trio.fail_after(seconds):
        return json.loads(await ws.get_message())


async def until(
    ws: WebSocketConnection, done: Callable[[dict], bool], seconds: float = 15
) -> list[dict]:
    """Every message up to and including the first that satisfies ``done``."""
    got: list[dict] = []
    with trio.fail_after(seconds):
        while True:
            message = json.loads(await ws.get_message())
            got.append(message)
            if done(message):
                return got


def is_job_end(job_id: str) -> Callable[[dict], bool]:
    return lambda m: (
        m["type"] == "job_event" and m["job"] == job_id and m["event"] == "job_complete"
    )


async def post_job(fleet: ClientFleet, command: str, nodes: list[str], **opts: Any) -> str:
    return await trio.to_thread.run_sync(lambda: fleet.post(command, nodes, **opts))


def job_messages(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["type"] in ("job_event", "org_event")]


# ---------------------------------------------------------------------------------------------


async def test_a_jobs_events_arrive_in_order_with_its_id_and_the_org_events(server, fleet):
    async with stream(server) as (ws, hello):
        assert hello["org"] == ORG and hello["subscription"] == {"jobs": "*", "nodes": True}
        assert hello["nodes"].get("w1") == "available"
        job_id = await post_job(fleet, "ok", ["w1"])
        got = await until(ws, is_job_end(job_id))
        org_end = await until(
            ws, lambda m: m["type"] == "org_event" and m["event"] == "job_complete"
        )
    events = [m for m in got if m["type"] == "job_event"]
    assert {m["job"] for m in events} == {job_id}
    assert [m["id"] for m in events] == [f"job-{n}" for n in range(1, len(events) + 1)]
    assert [(m["event"], m["data"].get("node"), m["data"].get("status")) for m in events] == [
        ("start", None, None),
        ("quorum_vote", "w1", "success"),
        ("quorum_succeeded", None, None),
        ("run_start", "w1", None),
        ("run_complete", "w1", "success"),
        ("job_complete", None, "complete"),
    ]
    assert events[0]["data"]["command"] == "ok" and events[0]["data"]["node_count"] == 1
    # the same events as the job's SSE feed (still live within wait_complete_time)
    org_events = [m for m in got + org_end if m["type"] == "org_event"]
    assert [(m["event"], m["data"]["job"]) for m in org_events] == [
        ("start", job_id),
        ("job_complete", job_id),
    ]
    assert all(m["id"].startswith("org-") for m in org_events)
    assert org_events[1]["data"]["status"] == "complete"


async def test_live_output_comes_as_job_events_without_an_id(server, fleet):
    async with stream(server, subscribe={"jobs": "*", "nodes": False}) as (ws, _):
        job_id = await post_job(fleet, "talk", ["w1"], capture_output=True)
        got = await until(ws, is_job_end(job_id))
    outputs = [m for m in got if m["type"] == "job_event" and m["event"] == "output"]
    assert [(m["job"], m["data"]["node"], m["data"]["stream"]) for m in outputs] == [
        (job_id, "w1", "stdout"),
        (job_id, "w1", "stderr"),
    ]
    assert [(m["data"]["offset"], m["data"]["data"]) for m in outputs] == [
        (0, "hello\n"),
        (0, "bye\n"),
    ]
    assert all("id" not in m for m in outputs)
    # the command's first line is out while it still runs (before run_complete)
    names = [m["event"] for m in got if m["type"] == "job_event"]
    assert names.index("output") < names.index("run_complete")


async def test_node_availability_changes(server, fleet):
    async with stream(server) as (ws, _):
        client = await trio.to_thread.run_sync(lambda: fleet.add("w-node", whitelist=WHITELIST))
        try:
            came = await until(
                ws, lambda m: m["type"] == "node" and m["availability"] == "available"
            )
            mine = [m for m in came if m["type"] == "node"]
            assert {m["node"] for m in mine} == {"w-node"}
            assert (mine[-1]["status"], mine[-1]["availability"]) == ("online", "available")
            assert all(m["status"] == "online" for m in mine)
            async with stream(server) as (_, hello):  # a new reader's snapshot has it
                assert hello["nodes"]["w-node"] == "available"
            client.kill()
            went = await until(ws, lambda m: m["type"] == "node", seconds=20)
            assert (went[-1]["node"], went[-1]["status"], went[-1]["availability"]) == (
                "w-node",
                "offline",
                "unavailable",
            )
        finally:
            client.kill()


async def test_subscriptions_filter_jobs_and_nodes_and_replay_a_named_live_job(server, fleet):
    async with stream(server, subscribe={"jobs": [], "nodes": False}) as (ws, _):
        other = await post_job(fleet, "ok", ["nowhere-1"])  # ends at once: quorum_failed
        watched = await post_job(fleet, "slow", ["w1"])
        await ws.send_message(json.dumps({"subscribe": {"jobs": [watched]}}))
        late = await post_job(fleet, "ok", ["nowhere-2"])  # while only `watched` is wanted
        client = await trio.to_thread.run_sync(lambda: fleet.add("w-sub", whitelist=WHITELIST))
        try:
            await trio.to_thread.run_sync(lambda: fleet.wait_available("w-sub"))
            got = await until(ws, is_job_end(watched))
            await ws.send_message(json.dumps({"subscribe": {"nodes": True}}))
            client.kill()
            rest = await until(ws, lambda m: m["type"] == "node")
        finally:
            client.kill()
    ack = got[0]
    assert ack == {"type": "subscribed", "subscription": {"jobs": [watched], "nodes": False}}
    jobs = job_messages(got + rest)  # the org feed's job_complete follows the job's
    assert {m["job"] if m["type"] == "job_event" else m["data"]["job"] for m in jobs} == {watched}
    assert other not in json.dumps(got + rest) and late not in json.dumps(got + rest)
    events = [m for m in jobs if m["type"] == "job_event"]
    # the replay of what happened before the subscription, then the rest: no gap, no repeat
    assert [m["id"] for m in events] == [f"job-{n}" for n in range(1, len(events) + 1)]
    assert events[0]["event"] == "start" and events[-1]["data"]["status"] == "complete"
    assert not [m for m in got if m["type"] == "node"], "nodes were switched off"
    [ack] = [m for m in rest if m["type"] == "subscribed"]
    assert ack["subscription"] == {"jobs": [watched], "nodes": True}
    assert (rest[-1]["node"], rest[-1]["status"]) == ("w-sub", "offline")


async def test_bad_client_messages_get_an_error_and_the_stream_goes_on(server, fleet):
    async with stream(server) as (ws, _):
        for bad in ("hello?", '{"subscribe": {"jobs": "all"}}', '{"unsubscribe": true}'):
            await ws.send_message(bad)
            error = await until(ws, lambda m: m["type"] == "error")
            assert error[-1]["error"], error
        job_id = await post_job(fleet, "ok", ["nowhere-3"])
        got = await until(ws, is_job_end(job_id))
        assert got[-1]["data"]["status"] == "quorum_failed"


async def test_an_idle_stream_gets_keepalives(server):
    async with stream(server, subscribe={"jobs": [], "nodes": False}) as (ws, _):
        for _ in range(2):
            message = await receive(ws, seconds=KEEP_ALIVE * 5)
            assert message["type"] == "keepalive", message


async def rejection(server: Server, path: str, headers: list) -> tuple[int, Any]:
    url = server.url.replace("http://", "ws://") + path
    with pytest.raises(ConnectionRejected) as caught:
        with trio.fail_after(10):
            async with open_websocket_url(url, extra_headers=headers):
                pass
    exc = caught.value
    assert dict(exc.headers)[b"content-type"] == b"application/json"
    return exc.status_code, json.loads(exc.body)


async def test_the_handshake_is_authenticated_like_the_rest_routes(server, fleet):
    admin = fleet.admin
    outsider_org = "ws-elsewhere"
    r = await trio.to_thread.run_sync(
        lambda: admin.post("/organizations", {"name": outsider_org, "full_name": "x"})
    )
    assert r.status_code == 201, r.text
    outsider = await trio.to_thread.run_sync(lambda: new_user(admin, "ws-outsider", outsider_org))
    member = await trio.to_thread.run_sync(lambda: new_user(admin, "ws-member", ORG))
    wrong_key = private_pem(generate_rsa(2048))
    path = ws_path()
    cases = {
        "unsigned": (path, [], {}),
        "wrong key": (path, headers_for(server, path, key=wrong_key), {"key": wrong_key}),
        "other org's user": (
            path,
            headers_for(server, path, "ws-outsider", outsider.key_pem),
            {"user": "ws-outsider", "key": outsider.key_pem},
        ),
        "unknown org": (ws_path("ws-nosuch"), headers_for(server, ws_path("ws-nosuch")), {}),
    }
    expected = {"unsigned": 400, "wrong key": 401, "other org's user": 403, "unknown org": 404}
    for name, (ws_target, headers, who) in cases.items():
        status, body = await rejection(server, ws_target, headers)
        # the REST route answers the same request the same way
        rest_target = ws_target.replace("/pushy/ws", "/pushy/node_states")
        if name == "unsigned":
            rest = await trio.to_thread.run_sync(
                lambda t=rest_target: admin.http.get(t, headers={"Accept": "application/json"})
            )
        else:
            user = who.get("user", "pivotal")
            key = load_private_pem(who.get("key") or server.pivotal_key.read_bytes())
            signed = sign(key, user, "GET", rest_target)
            rest = await trio.to_thread.run_sync(
                lambda t=rest_target, h=signed: admin.http.get(
                    t, headers={"Accept": "application/json", **h}
                )
            )
        assert (status, body) == (rest.status_code, rest.json()), name
        assert status == expected[name], (name, body)
    # a member of the org outside pushy_job_readers (once that group exists) is refused too
    await trio.to_thread.run_sync(lambda: set_group(admin, ORG, "pushy_job_readers"))
    try:
        status, body = await rejection(
            server, path, headers_for(server, path, "ws-member", member.key_pem)
        )
        assert status == 403 and "ws-member" in json.dumps(body)
        async with stream(server):  # the superuser still reads
            pass
    finally:
        await trio.to_thread.run_sync(
            lambda: set_group(admin, ORG, "pushy_job_readers", users=["ws-member"])
        )
    async with open_websocket_url(
        server.url.replace("http://", "ws://") + path,
        extra_headers=headers_for(server, path, "ws-member", member.key_pem),
    ) as ws:
        assert (await receive(ws))["type"] == "hello"


async def test_a_reader_that_never_reads_is_dropped_and_others_are_served(server, fleet):
    path = ws_path()
    big = "x" * 200_000  # start events carry the command: a few posts fill any socket buffer
    nodes = [f"gone-{i}" for i in range(40)]
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", server.ports["api_port"]))
    host, port = sock.getsockname()[:2]
    dropped = f"websocket reader {host}:{port} of org {ORG} fell more than 1024 messages behind"
    async with trio.open_nursery() as nursery:
        # message_queue_size=1: the library stops reading the socket once one message waits
        slow = await wrap_client_stream(
            nursery,
            trio.SocketStream(sock),
            "127.0.0.1",
            path,
            extra_headers=headers_for(server, path),
            message_queue_size=1,
        )
        async with stream(server) as (fast, _):
            fast_seen: list[str] = []

            async def read_fast() -> None:
                while True:
                    message = json.loads(await fast.get_message())
                    if message["type"] == "job_event" and message["event"] == "job_complete":
                        fast_seen.append(message["job"])

            async with trio.open_nursery() as readers:
                readers.start_soon(read_fast)
                posted = []
                for _ in range(200):
                    posted.append(await post_job(fleet, big, nodes))
                    with trio.fail_after(30):  # the fast reader keeps up, post by post
                        while posted[-1] not in fast_seen:
                            await trio.sleep(0.01)
                    if dropped in server.log_path.read_text():
                        break
                assert dropped in server.log_path.read_text(), "the slow reader was never dropped"
                last = await post_job(fleet, "ok", ["nowhere-4"])
                # the slow one now reads: what was already on its way, then the close
                slow_jobs = set()
                with trio.fail_after(30):
                    with pytest.raises(ConnectionClosed) as closed:
                        while True:
                            message = json.loads(await slow.get_message())
                            if message["type"] == "job_event":
                                slow_jobs.add(message["job"])
                with trio.fail_after(30):
                    while last not in fast_seen:
                        await trio.sleep(0.05)
                readers.cancel_scope.cancel()
            assert set(posted) <= set(fast_seen), "the fast reader missed jobs"
        nursery.cancel_scope.cancel()
    assert closed.value.reason.code == 1008, closed.value.reason
    assert "too slow" in (closed.value.reason.reason or "")
    assert last not in slow_jobs and not set(posted) <= slow_jobs


async def test_server_shutdown_closes_the_stream_even_with_a_reader_that_never_reads(tmp_path):
    with Server(tmp_path / "state", **SETTINGS) as srv:
        admin, _ = await trio.to_thread.run_sync(lambda: setup_org(srv, ORG, ()))
        path = ws_path()
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", srv.ports["api_port"]))
        async with trio.open_nursery() as nursery:
            await wrap_client_stream(
                nursery,
                trio.SocketStream(sock),
                "127.0.0.1",
                path,
                extra_headers=headers_for(srv, path),
                message_queue_size=1,
            )
            async with stream(srv, subscribe={"jobs": [], "nodes": False}) as (ws, _):
                big = {"command": "x" * 200_000, "nodes": ["gone"]}
                for _ in range(30):  # the never-reader's socket fills; the server's send waits
                    r = await trio.to_thread.run_sync(
                        lambda: admin.post(f"/organizations/{ORG}/pushy/jobs", big)
                    )
                    assert r.status_code == 201, r.text
                srv.proc.terminate()
                with trio.fail_after(15):
                    with pytest.raises(ConnectionClosed) as closed:
                        while True:
                            message = json.loads(await ws.get_message())
                            assert message["type"] in ("subscribed", "keepalive"), message
                assert closed.value.reason.code == 1001, closed.value.reason
                assert closed.value.reason.reason == "server shutting down"
            status = await trio.to_thread.run_sync(lambda: srv.proc.wait(20))
            assert status == 0, srv.log()
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# pushy watch


def watch_command(server: Server, *extra: str, key: Path | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "appliance",
        "watch",
        "--server-url",
        f"{server.url}/organizations/{ORG}",
        "-u",
        "pivotal",
        "-k",
        str(key or server.pivotal_key),
        *extra,
    ]


class Lines:
    """A child's stdout read by a thread, so that reads can be bounded in time."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for text in proc.stdout:
            self.lines.put(text)

    def until(self, done: Callable[[str], bool], seconds: float = 20) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                text = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            got.append(text)
            if done(text):
                return got
        raise AssertionError(f"not seen within {seconds} s; got {got!r}")


def run_watch(server: Server, *extra: str) -> tuple[subprocess.Popen, Lines]:
    proc = subprocess.Popen(
        watch_command(server, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    return proc, Lines(proc)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_watch_json_prints_each_message_as_a_json_line(server, fleet):
    proc, lines = run_watch(server, "-F", "json")
    try:
        first = json.loads(lines.until(lambda _: True)[0])
        assert first["type"] == "hello" and first["nodes"]["w1"] == "available"
        job_id = fleet.post("ok", ["w1"])
        got = lines.until(lambda t: job_id in t and '"job_complete"' in t and "job_event" in t)
        messages = [json.loads(text) for text in got]
        events = [m["event"] for m in messages if m["type"] == "job_event"]
        assert events == [
            "start",
            "quorum_vote",
            "quorum_succeeded",
            "run_start",
            "run_complete",
            "job_complete",
        ]
    finally:
        stop(proc)


def test_watch_plain_lines_for_a_job_subscription(server, fleet):
    watched = fleet.post("slow", ["w1"])
    proc, lines = run_watch(server, "--jobs", watched, "--no-nodes")
    try:
        got = lines.until(lambda t: " job_complete " in t)
        fleet.wait_job(watched)
    finally:
        stop(proc)
    assert got[0].split(" ", 1)[1].startswith(f"watching {ORG}:")
    body = [t.rstrip("\n") for t in got[1:]]
    assert all(t.split(" ")[1:3] == ["job", watched] for t in body), body
    assert body[0].endswith(f"job {watched} start slow (1 nodes)")
    assert any(t.endswith(f"job {watched} quorum_vote w1 success") for t in body)
    assert body[-1].endswith(f"job {watched} job_complete complete")


def test_watch_once_prints_the_view_and_exits(server, fleet):
    r = subprocess.run(
        watch_command(server, "--once"), capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"pushy watch  {ORG}")
    assert "available" in r.stdout and "running jobs:" in r.stdout


def test_watch_auth_failure_exits_100_with_the_servers_reason(server, tmp_path):
    key = tmp_path / "other.pem"
    key.write_text(private_pem(generate_rsa(2048)))
    r = subprocess.run(
        watch_command(server, key=key), capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert r.returncode == 100, (r.stdout, r.stderr)
    assert "HTTP 401 Unauthorized: Invalid signature for user or client 'pivotal'" in r.stderr


def test_watch_unreachable_server_exits_100(server, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = watch_command(server)
    command[command.index("--server-url") + 1] = f"http://127.0.0.1:{port}/organizations/{ORG}"
    r = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 100 and "cannot reach" in r.stderr, (r.stdout, r.stderr)


def test_watch_reconnects_after_the_server_restarts(tmp_path):
    srv = Server(tmp_path / "state", **SETTINGS).start()
    try:
        setup_org(srv, ORG, ())
        proc, lines = run_watch(srv, "-F", "json")
        try:
            lines.until(lambda t: '"hello"' in t)
            port = srv.ports["api_port"]
            srv.stop()
            srv.settings["api_port"] = port
            srv.start()
            lines.until(lambda t: '"hello"' in t, seconds=30)
            assert proc.poll() is None
        finally:
            stop(proc)
        err = proc.stderr.read()
        assert "reconnecting in" in err and len(err.splitlines()) <= 10, err
    finally:
        srv.kill()
    wait_for(lambda: proc.poll() is not None, 5)
