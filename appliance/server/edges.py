"""The coordinator's side of the edges: the link socket, the local edge processes it supervises,
and the node sends it routes to the edge that holds each node.

In edge mode (``edge_processes`` ≥ 1) the coordinator binds no node socket. Each edge (a
``pushy edge`` process, see ``appliance.edge``) holds the nodes' ROUTER and PUB sockets, checks
their messages, keeps their liveness, and forwards only what the node table needs
(``core.edgelink``). This object stands where the reactor stands in single-process mode: the
dispatcher's ``Outbound`` (signed sends, routed by the node's packed address), and the source
of node messages, which it hands to the dispatcher like the reactor does.

Local edges share the node ports through SO_REUSEPORT (``appliance.reuseport``); the coordinator
reserves the ports and starts, watches and restarts the processes. Remote edges (``pushy edge
--coordinator``, on other hosts) connect to the same link with a CURVE key listed in
``STATE_DIR/edges/*.pub`` and serve the nodes that ``core.edgelink.assign`` gives them: the config
endpoint hands those nodes the edge's addresses. An edge that dies or goes silent loses its
nodes to ghosts (as a restart does); they reconnect, through ZeroMQ's reconnect or the client's
reconfigure, to another edge and are reconciled with their jobs.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio
import zmq

from appliance import reuseport
from appliance.core import edgelink
from appliance.core import nodes as corenodes
from appliance.core.settings import Settings, bind_host
from appliance.core.state import State
from appliance.server.clock import Clock
from appliance.server.edgelaunch import LocalLink
from appliance.server.outbound import NodeSigner, ServerBeat
from appliance.zmqio import TrioSocket, handle_forever, serve_zap, zap_socket, zap_verdict

log = logging.getLogger("pushy.edges")
EDGE_SILENCE_SECONDS = 5.0  # an edge reports every second; this much silence and it is lost
WHO_EVERY_SECONDS = 1.0  # how often an unknown edge is asked who it is
KEYS_ACK_SECONDS = 5.0  # the longest a config fetch waits for the edges to learn its keys
HELLO_REPEAT_SECONDS = 5.0  # a known edge's hello this soon after its SETUP is a queued copy
EDGE_START_SECONDS = 30.0  # the longest a start waits for its local edges before READY
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)
EDGE_KEYS_DIR = "edges"  # NAME.pub: the CURVE public keys of the remote edges allowed in


def allowed_edge_keys(state_dir: Path) -> set[str]:
    keys = set()
    for path in (state_dir / EDGE_KEYS_DIR).glob("*.pub"):
        try:
            keys.add(path.read_text().strip())
        except OSError:
            continue
    return keys


@dataclass
class EdgeInfo:
    ident: bytes
    name: str
    pid: int | None
    remote: dict[str, Any] | None  # where its nodes connect: host, command_port, heartbeat port
    last_seen: float
    stats: dict[str, Any] = field(default_factory=dict)
    keys_acked: int = 0  # the last KEYS it applied
    joined: float = 0.0  # when its SETUP was sent

    @property
    def prefix(self) -> bytes:
        return edgelink.pack_address(self.ident, b"")


class EdgeHub:
    def __init__(
        self,
        settings: Settings,
        state: State,
        clock: Clock,
        *,
        signer: NodeSigner,
        beat: ServerBeat,
        state_dir: Path,
        count: int,
        command: list[str],
        local: LocalLink | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.clock = clock
        self.signer = signer
        self.beat = beat
        self.state_dir = state_dir
        self.count = count  # local edge processes
        self.command = command  # how to start one: [*pushy_command(), "edge"]
        self.local = local  # the link's listener and keys, and edges started early (or None)
        self.ctx = zmq.Context(io_threads=1)
        self.link: TrioSocket | None = None
        self.edges: dict[bytes, EdgeInfo] = {}
        self.live_jobs: Callable[[], list[str]] = list
        self.dispatcher: Any = None  # set by build_context: node messages and edge events go there
        self.received: Counter[str] = Counter()  # totals of edges that are gone
        self.dropped: Counter[str] = Counter()
        self.restarts = 0
        self._reserved: list[socket.socket] = []
        self.ports: dict[str, int] = {}
        self._local_joined = trio.Event()
        self._keys_seq = 0
        self._asked: dict[bytes, float] = {}  # when an unknown edge was last asked WHO
        self._keys_acked = trio.Event()  # pulsed whenever an edge acknowledges KEYS

    # Lifecycle -------------------------------------------------------------------------------
    async def run(
        self, deliver: Any = None, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Reserve the node ports, bind the link, start the local edges; serve until cancelled."""
        s = self.settings
        host = bind_host(s.zeromq_listen_address)
        for name in ("command_port", "server_heartbeat_port"):
            sock = reuseport.reserve(host, getattr(s, name))
            self._reserved.append(sock)
            self.ports[name] = sock.getsockname()[1]
        if self.local is None:  # not made before the state was loaded (see edgelaunch)
            # the key's first write is synced to disk: not on the loop
            self.local = await trio.to_thread.run_sync(
                LocalLink.open, s, self.state_dir, self.command
            )
        local = self.local
        async with trio.open_nursery() as nursery:
            try:
                nursery.start_soon(serve_zap, zap_socket(self.ctx), self._zap_reply)
                link = self.ctx.socket(zmq.ROUTER)
                link.linger = 0
                link.setsockopt(zmq.ROUTER_MANDATORY, 1)
                link.setsockopt(zmq.SNDHWM, 1_000_000)
                link.setsockopt(zmq.RCVHWM, 1_000_000)
                link.curve_server = True
                link.curve_secretkey = local.secret.encode("ascii")
                # our own listener, handed over (see reuseport.listener: no NIC lookup)
                port = local.listener.getsockname()[1]
                link.setsockopt(zmq.USE_FD, local.listener.detach())
                link.bind(f"tcp://*:{port}")  # with USE_FD libzmq ignores the address
                self.ports["edge_link_port"] = port
                self.link = TrioSocket(link)
                nursery.start_soon(handle_forever, self.link, self._on_link, log, "an edge message")
                nursery.start_soon(self.beat.run, lambda: self.settings, self.clock, self._publish)
                nursery.start_soon(self._watch)
                for i in range(self.count):
                    nursery.start_soon(self._supervise, i)
                # ready means the node ports are served: wait (bounded) for the local edges
                with trio.move_on_after(EDGE_START_SECONDS):
                    await self._local_joined.wait()
                if not self._local_joined.is_set():
                    log.warning("not every local edge joined within %.0f s", EDGE_START_SECONDS)
                task_status.started(dict(self.ports))
                await trio.sleep_forever()
            finally:
                if self.link is not None:
                    self.link.close()
                nursery.cancel_scope.cancel()

    def close(self) -> None:
        for sock in self._reserved:
            sock.close()
        self.ctx.destroy(linger=0)

    # Local edge processes --------------------------------------------------------------------
    async def _supervise(self, index: int) -> None:
        """Run local edge ``index``, and again whenever it exits."""
        assert self.local is not None
        failures = 0
        name = f"local-{index}"
        early = self.local.adopt(index)
        while True:
            started = trio.current_time()
            proc: trio.Process | _Adopted
            if early is not None:
                proc, early = _Adopted(early), None
            else:
                self.local.log_level = self.settings.log_level  # a reload may have changed it
                proc = await trio.lowlevel.open_process(
                    self.local.argv(index), env=self.local.env(), stdin=subprocess.DEVNULL
                )
            try:
                code = await proc.wait()
            finally:
                if proc.returncode is None:  # the server stops: so does its edge
                    proc.send_signal(signal.SIGTERM)
                    with trio.CancelScope(shield=True), trio.move_on_after(3):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
            for info in [i for i in self.edges.values() if i.pid == proc.pid]:
                self._lost(info, f"its process exited ({_exit_text(code)})")
            # a crash loop dies at start; an edge that served a while starts again at once
            failures = 0 if trio.current_time() - started > 5 else failures + 1
            delay = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)]
            log.warning(
                "edge %s exited (%s); restarting it in %.1f s", name, _exit_text(code), delay
            )
            self.restarts += 1
            await trio.sleep(delay)

    # The link --------------------------------------------------------------------------------
    def _zap_reply(self, frames: list[bytes]) -> list[bytes]:
        reply = zap_verdict(frames, self._edge_key_allowed, b"Not an edge of this server")
        if reply[2] != b"200":
            log.warning("refused an edge link connection: its CURVE key is not allowed")
        return reply

    def _edge_key_allowed(self, key: str) -> bool:
        assert self.local is not None
        return key == self.local.local_public or key in allowed_edge_keys(self.state_dir)

    def _on_link(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            return
        ident, kind = frames[0], frames[1]
        info = self.edges.get(ident)
        now = self.clock.now()
        if kind == edgelink.HELLO:
            self._hello(ident, orjson.loads(frames[2]), now)
            return
        if info is None:
            if now - self._asked.get(ident, -WHO_EVERY_SECONDS) >= WHO_EVERY_SECONDS:
                self._asked[ident] = now  # once a second: each answer costs a whole SETUP
                self._send(ident, [edgelink.WHO])
            return
        info.last_seen = now
        d = self.dispatcher
        if kind == edgelink.MSG:
            body = orjson.loads(frames[3])
            key = (body["org"], body["node"])
            d.node_message(key, edgelink.pack_address(ident, frames[2]), body, now)
        elif kind == edgelink.DOWN:
            org, node, reason = orjson.loads(frames[3])
            d.edge_down((org, node), edgelink.pack_address(ident, frames[2]), reason, now)
        elif kind == edgelink.STATS:
            info.stats = orjson.loads(frames[2])
        elif kind == edgelink.KEYS_ACK:
            info.keys_acked = int(frames[2])
            self._pulse_keys_acked()

    def _hello(self, ident: bytes, hello: dict[str, Any], now: float) -> None:
        self._asked.pop(ident, None)
        known = self.edges.get(ident)
        if known is not None and now - known.joined < HELLO_REPEAT_SECONDS:
            # one of the hellos an edge started early queued while the link was not yet
            # served: its SETUP (a copy of every key) is already on its way
            known.last_seen = now
            return
        name = str(hello.get("name", "?"))
        remote = hello.get("advertise")
        for other in [i for i in self.edges.values() if i.name == name and i.ident != ident]:
            self._lost(other, "a new process of it said hello")
        # its SETUP carries every key so far
        self.edges[ident] = EdgeInfo(
            ident, name, hello.get("pid"), remote, now, keys_acked=self._keys_seq, joined=now
        )
        if sum(1 for i in self.edges.values() if i.remote is None) >= self.count:
            self._local_joined.set()
        s = self.settings
        setup = {
            "settings": {
                "zeromq_listen_address": s.zeromq_listen_address,
                "command_port": self.ports["command_port"],
                "server_heartbeat_port": self.ports["server_heartbeat_port"],
                "max_body_size": s.max_body_size,
                "max_time_skew": s.max_time_skew,
                "heartbeat_interval": s.heartbeat_interval,
                "decay_window": s.decay_window,
                "down_threshold": s.down_threshold,
                "detect_offline_nodes_interval": s.detect_offline_nodes_interval,
                "disable_curve_encryption": s.disable_curve_encryption,
            },
            "curve_secret": self.state.server.curve_secret if self.state.server else None,
            "keys": [edgelink.key_row(k, v) for k, v in self.state.node_keys.items()],
            "jobs": self.live_jobs(),
        }
        self._send(ident, [edgelink.SETUP, orjson.dumps(setup)])
        where = f" (nodes reach it at {remote.get('host')})" if remote else ""
        log.info("edge %s (pid %s) joined%s", name, hello.get("pid"), where)

    def _pulse_keys_acked(self) -> None:
        self._keys_acked.set()
        self._keys_acked = trio.Event()

    def _lost(self, info: EdgeInfo, why: str) -> None:
        if self.edges.pop(info.ident, None) is None:
            return
        self._pulse_keys_acked()  # nobody waits for its acknowledgement any more
        log.warning(
            "edge %s (pid %s) is gone: %s; its nodes must reconnect", info.name, info.pid, why
        )
        self.received.update(info.stats.get("received", {}))
        self.dropped.update(info.stats.get("dropped", {}))
        self.dispatcher.edge_lost(info.prefix, self.clock.now())

    async def _watch(self) -> None:
        """Edges that went silent (hung, or a remote host gone) are lost.

        Only judged when the link has nothing left to read: after a long step of the
        coordinator's own (a 20,000-node job start), the edges' reports are queued, not
        missing, and reading them is what tells."""
        assert self.link is not None
        while True:
            planned = trio.current_time() + 1.0
            await trio.sleep(1.0)
            late = trio.current_time() - planned
            if late > 0.5:  # we stood still (a long step, a stopped process): not their silence
                for info in self.edges.values():
                    info.last_seen += late
                continue
            if self.link.pending():
                continue
            now = self.clock.now()
            for ident, asked in list(self._asked.items()):  # strangers that never said hello
                if now - asked > 60 * WHO_EVERY_SECONDS:
                    del self._asked[ident]
            for info in list(self.edges.values()):
                if now - info.last_seen > EDGE_SILENCE_SECONDS:
                    self._lost(info, f"silent for {now - info.last_seen:.0f} s")
                    if info.pid is not None and info.remote is None:
                        _kill(info.pid)  # the supervisor starts another

    def _send(self, ident: bytes, frames: list[bytes]) -> bool:
        return self.link is not None and self.link.send_nowait([ident, *frames])

    def _broadcast(self, frames: list[bytes]) -> None:
        for ident in self.edges:
            self._send(ident, frames)

    def _publish(self, beat: list[bytes]) -> None:
        self._broadcast([edgelink.BEAT, *beat])

    # Outbound (the dispatcher's) --------------------------------------------------------------
    def send_to_node(self, key: corenodes.NodeKey, body: dict[str, Any], now: float) -> bool:
        signed = self.signer.frames_for(key, body, now)
        if signed is None:
            return False
        address, frames = signed
        ident, router_address = edgelink.unpack_address(address)
        if ident not in self.edges or not self._send(
            ident, [edgelink.SEND, router_address, *frames]
        ):
            self.dropped["unroutable"] += 1
            return False
        return True

    def behind(self) -> bool:
        """Whether the edges' reports wait to be read (the liveness scan waits for them)."""
        return self.link is not None and self.link.pending()

    def forget(self, key: corenodes.NodeKey) -> None:
        self.signer.forget(key)
        self._broadcast([edgelink.FORGET, orjson.dumps(list(key))])

    def keys_changed(self, key: corenodes.NodeKey) -> int:
        """A node's session key or CURVE key changed (a config fetch), or its client is gone.
        Returns the sequence number the edges acknowledge once they apply it."""
        self._keys_seq += 1
        row = edgelink.key_row(key, self.state.node_keys.get(key))
        self._broadcast([edgelink.KEYS, orjson.dumps([row]), b"%d" % self._keys_seq])
        return self._keys_seq

    async def keys_ready(self, key: corenodes.NodeKey) -> None:
        """Send the node's new keys and wait (bounded) until every edge has them, before the
        node hears of them: a CURVE handshake an edge refuses (ZAP 400) is never retried by
        libzmq, so a node that connected before its edge knew its key would stay cut off."""
        seq = self.keys_changed(key)
        with trio.move_on_after(KEYS_ACK_SECONDS):
            while any(info.keys_acked < seq for info in self.edges.values()):
                await self._keys_acked.wait()
            return
        late = [i.name for i in self.edges.values() if i.keys_acked < seq]
        log.warning(
            "edges %s did not confirm a node's new keys within %.0f s", late, KEYS_ACK_SECONDS
        )

    def apply_settings(self, settings: Settings) -> None:
        """A reload: the running settings, and the live ones the edges read."""
        self.settings = settings
        live = {key: getattr(settings, key) for key in edgelink.LIVE_AT_EDGES}
        self._broadcast([edgelink.SETTINGS, orjson.dumps(live)])

    def jobs_changed(self, job_id: str, live: bool) -> None:
        change = {"add": [job_id], "remove": []} if live else {"add": [], "remove": [job_id]}
        self._broadcast([edgelink.JOBS, orjson.dumps(change)])

    # What the config endpoint and /pushy/_status read -----------------------------------------
    def remote_for(self, key: corenodes.NodeKey) -> dict[str, Any] | None:
        """The remote edge that serves this node (its advertised addresses), or None: local."""
        remotes = {i.name: i.remote for i in self.edges.values() if i.remote}
        if not remotes:
            return None
        group = edgelink.assign(key, ["", *sorted(remotes)])
        return remotes.get(group or "")

    def counters(self) -> tuple[Counter[str], Counter[str]]:
        received, dropped = Counter(self.received), Counter(self.dropped)
        for info in self.edges.values():
            received.update(info.stats.get("received", {}))
            dropped.update(info.stats.get("dropped", {}))
        return received, dropped

    def report(self) -> list[dict[str, Any]]:
        return [
            {"name": i.name, "pid": i.pid, "remote": i.remote, **i.stats}
            for i in sorted(self.edges.values(), key=lambda i: i.name)
        ]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class _Adopted:
    """An edge started before the loop ran (``edgelaunch``), waited for as trio waits for its
    own children: on a pidfd."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.pid = proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    async def wait(self) -> int:
        if self.proc.poll() is None:
            fd = os.pidfd_open(self.pid)
            try:
                await trio.lowlevel.wait_readable(fd)
            finally:
                os.close(fd)
        return self.proc.wait()

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.kill()
