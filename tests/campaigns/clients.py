"""Many SSE and websocket readers of one org at once: every reader gets every job's events, the
server's memory and file descriptors stay bounded and come back when the readers leave.

    python -m tests.campaigns.clients --sse 500 --ws 500 --events 1000

starts a real server, opens ``--sse`` readers of the org feed (``/pushy/job_status_feed``) and
``--ws`` websocket streams (``/pushy/ws``), optionally ``--stalled`` readers of each kind that
never read, then posts ``--events`` jobs (each to a node that is not there, so each ends at once
with ``quorum_failed``: a ``start`` and a ``job_complete`` on the org feed, its job events on
the websocket). Posting is paced so that no reader is more than ``--window`` jobs behind (a
reader that keeps up is never dropped). It prints the server's RSS and open descriptors before,
at the peak and after, and each reader's deliveries; the exit status is 0 only when every
reader that reads saw every job's ``job_complete`` exactly once and the descriptors came back.

The reader pieces (``SseReader``, ``WsReader``, ``open_stalled``, ``tcp_send_queue``,
``rss_kb``, ``fd_count``) are shared with tests/e2e/test_limits.py.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import trio
from trio_websocket import open_websocket_url

from appliance.core.keys import load_private_pem
from tests.support import Server, setup_org, sign, wait_for

CONNECT_PARALLEL = 40  # handshakes in flight at once (hypercorn's accept backlog is 100)
PHASE_SECONDS = 600.0  # bound of each phase (connect, post, drain)
SERVER_SETTINGS = {
    "keep_alive_time": 5,
    "wait_complete_time": 1,
    "voting_timeout": 2,
    "log_level": "info",
}


# ---------------------------------------------------------------------------------------------
# the server process, seen from outside


def rss_kb(pid: int) -> int:
    """Resident set size of a process (kB, /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def tcp_send_queue(server_port: int, client_port: int) -> int | None:
    """Bytes queued for sending on the server's side of a loopback connection (/proc/net/tcp),
    or None if there is no such connection: how full a never-reading client's pipe is."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, remote, queues = parts[1], parts[2], parts[4]
        if int(local.split(":")[1], 16) == server_port and (
            int(remote.split(":")[1], 16) == client_port
        ):
            return int(queues.split(":")[0], 16)
    return None


_keys: dict[str, Any] = {}


def pivotal_headers(server: Server, path: str) -> dict[str, str]:
    """Chef signing headers for a GET as the superuser (its key parsed once: parsing checks
    the RSA key, which costs more than the signature)."""
    name = str(server.pivotal_key)
    if name not in _keys:
        _keys[name] = load_private_pem(server.pivotal_key.read_bytes())
    return sign(_keys[name], "pivotal", "GET", path)


def request_bytes(server: Server, path: str, accept: str = "text/event-stream") -> bytes:
    """A signed GET, as knife signs it, for a raw socket."""
    headers = {
        "Host": f"127.0.0.1:{server.ports['api_port']}",
        "Accept": accept,
        **pivotal_headers(server, path),
    }
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def open_stalled(server: Server, path: str) -> socket.socket:
    """A reader that sends a signed SSE request and then never reads: a tiny receive buffer,
    so that the server's sends to it soon stop going through."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.ports["api_port"]))
    sock.sendall(request_bytes(server, path))
    return sock


# ---------------------------------------------------------------------------------------------
# readers


@dataclass(eq=False)
class Reader:
    """What one reader got: ``seen[i]`` counts the ``job_complete`` events of the i-th job."""

    name: str
    seen: bytearray = field(default_factory=bytearray)
    count: int = 0  # distinct jobs seen
    messages: int = 0
    duplicates: int = 0
    strangers: int = 0  # job_complete of a job not posted by the campaign
    ready: bool = False
    ended: str | None = None  # why the stream ended, if it did
    events: list[tuple[str, str, dict]] = field(default_factory=list)  # kept if ``keep``
    keep: bool = False

    early: list[str] = field(default_factory=list)  # seen before its POST was answered

    def completed(self, job_id: str, index: dict[str, int]) -> None:
        i = index.get(job_id)
        if i is None:
            self.early.append(job_id)
            return
        if len(self.seen) <= i:
            self.seen.extend(bytes(i + 1 - len(self.seen)))
        if self.seen[i]:
            self.duplicates += 1
        else:
            self.count += 1
        self.seen[i] = min(255, self.seen[i] + 1)

    def settle(self, index: dict[str, int]) -> None:
        """Count the jobs seen before their id was known; the rest stay strangers."""
        early, self.early = self.early, []
        for job_id in early:
            self.completed(job_id, index)
        self.strangers = len(self.early)


class SseReader(Reader):
    """An SSE reader over a raw trio socket and h11 (cheap enough for hundreds at once)."""

    async def run(self, server: Server, path: str, index: dict[str, int]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", server.ports["api_port"])
        async with stream:
            await stream.send_all(request_bytes(server, path))
            conn = h11.Connection(h11.CLIENT)
            conn.send(h11.Request(method="GET", target=path, headers=[("Host", "x")]))
            # (the request already went out as raw bytes; h11 only needs to expect the answer)
            conn.send(h11.EndOfMessage())
            buffer = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        self.ended = "connection closed"
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Response):
                    if event.status_code != 200:
                        self.ended = f"status {event.status_code}"
                        return
                    self.ready = True
                elif isinstance(event, h11.Data):
                    buffer += bytes(event.data)
                    *blocks, buffer = buffer.split(b"\n\n")
                    for block in blocks:
                        self._block(block, index)
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    self.ended = "stream ended"
                    return

    def _block(self, block: bytes, index: dict[str, int]) -> None:
        name = ident = data = None
        for line in block.decode().split("\n"):
            key, _, value = line.partition(": ")
            if key == "event":
                name = value
            elif key == "id":
                ident = value
            elif key == "data":
                data = value
        if name is None:
            return  # a keepalive comment
        self.messages += 1
        body = json.loads(data or "{}")
        if self.keep:
            self.events.append((name, ident or "", body))
        if name == "job_complete":
            self.completed(body.get("job", ""), index)


class WsReader(Reader):
    """A websocket stream reader (``/pushy/ws``) counting each job's ``job_complete``."""

    async def run(self, server: Server, path: str, index: dict[str, int]) -> None:
        url = server.url.replace("http://", "ws://") + path
        headers = [(k.encode(), v.encode()) for k, v in pivotal_headers(server, path).items()]
        async with open_websocket_url(url, extra_headers=headers) as ws:
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] == "hello":
                    self.ready = True
                    continue
                self.messages += 1
                if message["type"] == "job_event" and message["event"] == "job_complete":
                    self.completed(message["job"], index)


async def run_reader(reader: Reader, server: Server, path: str, index: dict[str, int]) -> None:
    """A reader that records why it ended instead of failing the whole nursery."""
    try:
        await reader.run(server, path, index)
    except Exception as exc:  # noqa: BLE001 (reported as the reader's end)
        reader.ended = f"{type(exc).__name__}: {exc}"[:200]


# ---------------------------------------------------------------------------------------------
# the campaign


@dataclass
class Report:
    sse: int
    ws: int
    stalled: int
    events: int
    seed: int
    posted: int = 0
    complete_readers: int = 0
    delivered: int = 0  # job_complete events received in all
    expected: int = 0
    duplicates: int = 0
    broken: list[str] = field(default_factory=list)  # readers that ended early
    rss_kb: dict[str, int] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    dropped_lines: int = 0
    disconnected_lines: int = 0
    failures: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        rss = ", ".join(f"{k} {v / 1024:.1f} MB" for k, v in self.rss_kb.items())
        fds = ", ".join(f"{k} {v}" for k, v in self.fds.items())
        secs = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return [
            f"seed {self.seed}: {self.sse} SSE + {self.ws} websocket readers"
            f" (+ {self.stalled} stalled of each), {self.posted}/{self.events} jobs posted",
            f"delivery: {self.complete_readers}/{self.sse + self.ws} readers saw every job;"
            f" {self.delivered}/{self.expected} job_complete events; {self.duplicates} duplicates;"
            f" {len(self.broken)} streams ended early",
            f"server RSS: {rss}",
            f"server open fds: {fds}",
            f"stalled readers: {self.dropped_lines} dropped, {self.disconnected_lines} cut off"
            " (server log lines)",
            f"time: {secs}",
            f"failures: {len(self.failures)}",
            *(f"  FAIL {f}" for f in self.failures),
        ]


async def campaign(
    server: Server,
    *,
    sse: int,
    ws: int,
    events: int,
    stalled: int = 0,
    window: int = 50,
    command_bytes: int = 0,
    seed: int = 1,
    org: str = "clients",
    progress: bool = False,
) -> Report:
    """Run the campaign against a started ``server`` (an org named ``org`` is created)."""
    rng = random.Random(seed)
    report = Report(sse=sse, ws=ws, stalled=stalled, events=events, seed=seed)
    pid = server.proc.pid
    admin, _ = await trio.to_thread.run_sync(lambda: setup_org(server, org, ()))
    sse_path = f"/organizations/{org}/pushy/job_status_feed"
    ws_path = f"/organizations/{org}/pushy/ws"
    index: dict[str, int] = {}
    readers: list[Reader] = [SseReader(f"sse-{i}") for i in range(sse)]
    readers += [WsReader(f"ws-{i}") for i in range(ws)]
    rng.shuffle(readers)  # connect the kinds interleaved
    peak = {"rss": 0, "fds": 0}
    log_start = server.log_path.stat().st_size

    def sample(phase: str) -> None:
        report.rss_kb[phase] = rss_kb(pid)
        report.fds[phase] = fd_count(pid)

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr, flush=True)

    sample("before")
    started = time.monotonic()
    stalled_socks: list[socket.socket] = []
    async with trio.open_nursery() as nursery:

        async def sampler() -> None:
            while True:
                peak["rss"] = max(peak["rss"], rss_kb(pid))
                peak["fds"] = max(peak["fds"], fd_count(pid))
                await trio.sleep(0.2)

        nursery.start_soon(sampler)
        limiter = trio.CapacityLimiter(CONNECT_PARALLEL)

        async def start_reader(reader: Reader) -> None:
            async with limiter:
                nursery.start_soon(
                    run_reader,
                    reader,
                    server,
                    sse_path if reader.name[0] == "s" else ws_path,
                    index,
                )
                with trio.move_on_after(60):
                    while not reader.ready and reader.ended is None:
                        await trio.sleep(0.01)

        with trio.move_on_after(PHASE_SECONDS):
            async with trio.open_nursery() as connecting:
                for reader in readers:
                    connecting.start_soon(start_reader, reader)
        not_ready = [r.name for r in readers if not r.ready]
        if not_ready:
            report.failures.append(f"{len(not_ready)} readers never connected: {not_ready[:5]}")
        for _ in range(stalled):
            stalled_socks.append(open_stalled(server, sse_path))
            stalled_socks.append(_open_stalled_ws(server, ws_path))
        report.seconds["connect"] = time.monotonic() - started
        sample("connected")
        say(
            f"{sum(r.ready for r in readers)} readers connected in {report.seconds['connect']:.1f} s"
        )

        posting = time.monotonic()
        command = "true" if command_bytes <= 0 else "x" * command_bytes
        live = [r for r in readers if r.ready]
        deadline = trio.current_time() + PHASE_SECONDS
        for k in range(events):
            while (
                live and min(r.count for r in live) < k - window and trio.current_time() < deadline
            ):
                live = [r for r in live if r.ended is None]
                await trio.sleep(0.005)
            body = {"command": command, "nodes": [f"absent-{k}"]}
            r = await trio.to_thread.run_sync(
                lambda body=body: admin.post(f"/organizations/{org}/pushy/jobs", body)
            )
            if r.status_code != 201:
                report.failures.append(f"job {k}: {r.status_code} {r.text[:200]}")
                break
            index[r.json()["id"]] = k
            report.posted += 1
            for reader in live:
                if reader.early:
                    reader.settle(index)
            if progress and (k + 1) % max(1, events // 10) == 0:
                say(f"posted {k + 1}/{events} jobs; slowest reader at {min(r.count for r in live)}")
        report.seconds["post"] = time.monotonic() - posting

        draining = time.monotonic()
        with trio.move_on_after(PHASE_SECONDS):
            while any(r.count < report.posted and r.ended is None for r in live):
                for reader in live:
                    reader.settle(index)
                await trio.sleep(0.05)
        report.seconds["drain"] = time.monotonic() - draining
        report.rss_kb["peak"] = max(peak["rss"], rss_kb(pid))
        report.fds["peak"] = max(peak["fds"], fd_count(pid))
        sample("after events")
        nursery.cancel_scope.cancel()
    for sock in stalled_socks:
        sock.close()

    def settled() -> bool:
        return fd_count(pid) <= report.fds["before"] + 5

    try:
        await trio.to_thread.run_sync(lambda: wait_for(settled, 30, what="fds back"))
    except AssertionError:
        report.failures.append(
            f"server fds did not come back: {fd_count(pid)} vs {report.fds['before']} before"
        )
    sample("after close")
    report.seconds["total"] = time.monotonic() - started

    report.expected = report.posted * (sse + ws)
    for reader in readers:
        reader.settle(index)
        report.delivered += reader.count
        report.duplicates += reader.duplicates
        if reader.count == report.posted and not reader.duplicates and not reader.strangers:
            report.complete_readers += 1
        elif reader.ready:
            report.failures.append(
                f"{reader.name}: {reader.count}/{report.posted} jobs, {reader.duplicates} dup,"
                f" {reader.strangers} strangers, ended: {reader.ended}"
            )
        if reader.ended is not None:
            report.broken.append(f"{reader.name}: {reader.ended}")
    log = server.log_path.read_text(errors="replace")[log_start:]
    report.dropped_lines = log.count("behind: dropped")
    report.disconnected_lines = log.count(": disconnected")
    return report


def _open_stalled_ws(server: Server, path: str) -> socket.socket:
    """A websocket handshake by hand on a socket that is never read after it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.ports["api_port"]))
    extra = (
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    raw = request_bytes(server, path, accept="*/*").replace(b"\r\n\r\n", b"\r\n" + extra.encode())
    sock.sendall(raw + b"\r\n")
    return sock


def run(args: argparse.Namespace) -> Report:
    with tempfile.TemporaryDirectory(prefix="pushy-clients-") as tmp:
        settings = dict(SERVER_SETTINGS)
        with Server(Path(tmp) / "state", **settings) as server:
            return trio.run(
                lambda: campaign(
                    server,
                    sse=args.sse,
                    ws=args.ws,
                    events=args.events,
                    stalled=args.stalled,
                    window=args.window,
                    command_bytes=args.command_bytes,
                    seed=args.seed,
                    progress=True,
                )
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.campaigns.clients", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sse", type=int, default=500, help="SSE org-feed readers")
    parser.add_argument("--ws", type=int, default=500, help="websocket stream readers")
    parser.add_argument("--events", type=int, default=1000, help="jobs posted (2 org events each)")
    parser.add_argument("--stalled", type=int, default=0, help="never-reading readers of each kind")
    parser.add_argument("--window", type=int, default=50, help="jobs the slowest reader may lag")
    parser.add_argument("--command-bytes", type=int, default=0, help="size of each job's command")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    print(f"seed {args.seed}", file=sys.stderr, flush=True)
    report = run(args)
    for line in report.lines():
        print(line)
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
