"""The edge process: node sockets (the server's ``Reactor``, in edge form), the link to the
coordinator, and per-node liveness (``core.edgelink.EdgeNodes``).

It binds nothing for nodes until the coordinator's SETUP arrives (it carries the CURVE secret
and every node's keys). From then on it checks node messages, forwards what the coordinator
needs, puts the coordinator's signed frames on the wire and publishes its heartbeats. When the
coordinator restarts the edge keeps its nodes connected; its next report reaches a coordinator
that does not know it, which answers WHO; the edge says hello, and the new SETUP makes every
node's next message a first contact, so the coordinator learns its nodes again without any of
them reconnecting.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import resource
import socket
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio
import zmq

from appliance import reuseport
from appliance.core import edgelink
from appliance.core import nodes as corenodes
from appliance.core.nodekeys import NodeKeys
from appliance.core.settings import Settings, bind_host
from appliance.server.clock import Clock
from appliance.server.reactor import Reactor
from appliance.server.scanner import watch_liveness
from appliance.zmqio import TrioSocket, handle_forever

log = logging.getLogger("pushy.edge")
HELLO_EVERY_SECONDS = 2.0
STATS_EVERY_SECONDS = 0.25  # counters; CPU, RSS and descriptors every 4th report
PARENT_CHECK_SECONDS = 0.5


class EdgeStopped(Exception):
    """The edge has nothing to serve (its server is gone)."""


@dataclass
class EdgeKeys:
    """The edge's copy of the keys its sockets check messages with (``reactor.KeyView``)."""

    node_keys: dict[corenodes.NodeKey, NodeKeys] = field(default_factory=dict)
    curve_index: dict[str, corenodes.NodeKey] = field(default_factory=dict)

    def put(self, key: corenodes.NodeKey, keys: NodeKeys | None) -> None:
        old = self.node_keys.pop(key, None)
        if old is not None and old.ccpk is not None and self.curve_index.get(old.ccpk) == key:
            del self.curve_index[old.ccpk]
        if keys is not None:
            self.node_keys[key] = keys
            if keys.ccpk is not None:
                self.curve_index[keys.ccpk] = key


@dataclass
class EdgeOptions:
    coordinator: str  # tcp://HOST:PORT of the coordinator's link
    name: str
    coordinator_public: str  # z85 CURVE keys of the link
    public: str
    secret: str
    local: bool  # started by the server: shares its ports, dies with it
    listen: str | None = None  # remote edges: where nodes connect (tcp://ADDRESS)
    command_port: int = 0
    heartbeat_port: int = 0
    advertise: str | None = None  # remote edges: the name nodes are told to connect to
    parent: int | None = None  # local edges: the server's pid (gone: the edge stops)


class Edge:
    def __init__(self, opts: EdgeOptions) -> None:
        self.opts = opts
        self.ident = f"{opts.name}.{os.urandom(4).hex()}".encode()
        self.clock = Clock()
        self.keys = EdgeKeys()
        self.nodes: edgelink.EdgeNodes | None = None
        self.reactor: Reactor | None = None
        self.ctx = zmq.Context(io_threads=1)
        self.link: TrioSocket | None = None
        self.hello_at = -HELLO_EVERY_SECONDS  # trio time of the last hello a WHO asked for
        # a local edge serves the server that started it (it says its pid), and no other
        self.parent = opts.parent if opts.parent is not None else os.getppid()
        self._listeners: dict[str, Any] = {}
        if not opts.local:  # bind now: the hello says which ports nodes connect to
            host = bind_host(opts.listen or "tcp://*")
            for name, port in (
                ("command_port", opts.command_port),
                ("server_heartbeat_port", opts.heartbeat_port),
            ):
                self._listeners[name] = reuseport.listener(host, port)

    def _hello(self) -> list[bytes]:
        o = self.opts
        hello: dict[str, Any] = {"name": o.name, "pid": os.getpid()}
        if not o.local:
            host = bind_host(o.listen or "tcp://*")
            if host in ("0.0.0.0", "::"):  # every interface: this host's name
                host = socket.getfqdn()
            hello["advertise"] = {
                "host": o.advertise or host,
                "command_port": self._listeners["command_port"].getsockname()[1],
                "server_heartbeat_port": self._listeners["server_heartbeat_port"].getsockname()[1],
            }
        return [edgelink.HELLO, orjson.dumps(hello)]

    async def run(self) -> None:
        o = self.opts
        link = self.ctx.socket(zmq.DEALER)
        link.linger = 0
        link.routing_id = self.ident
        link.setsockopt(zmq.SNDHWM, 1_000_000)
        link.setsockopt(zmq.RCVHWM, 1_000_000)
        link.curve_serverkey = o.coordinator_public.encode("ascii")
        link.curve_publickey = o.public.encode("ascii")
        link.curve_secretkey = o.secret.encode("ascii")
        link.connect(o.coordinator)
        self.link = TrioSocket(link)
        try:
            setup = await self._first_setup()
            async with trio.open_nursery() as nursery:
                self._start(setup)
                assert self.reactor is not None
                await nursery.start(self.reactor.run, self._deliver)
                nursery.start_soon(
                    handle_forever, self.link, self._on_link, log, "a coordinator message"
                )
                nursery.start_soon(self._scanner)
                nursery.start_soon(self._stats)
                if o.local:
                    nursery.start_soon(self._watch_parent, nursery.cancel_scope)
                log.info("edge %s serving nodes (pid %d)", o.name, os.getpid())
        finally:
            self.link.close()
            if self.reactor is not None:
                self.reactor.close()
            self.ctx.destroy(linger=0)

    async def _first_setup(self) -> dict[str, Any]:
        assert self.link is not None
        for attempt in itertools.count(1):
            # said every 10 s until a coordinator answers (the server's own edges wait for
            # it quietly: they start before it has replayed its log)
            if attempt % 5 == 0 and not self.opts.local:
                log.warning(
                    "no answer from the coordinator at %s after %d s: is it running in edge "
                    "mode and reachable there, and does it know this edge's key (pushy edge-key)?",
                    self.opts.coordinator,
                    int(attempt * HELLO_EVERY_SECONDS),
                )
            self.link.send_nowait(self._hello())
            with trio.move_on_after(HELLO_EVERY_SECONDS):
                while True:
                    frames = await self.link.recv_multipart()
                    if frames[0] == edgelink.SETUP:
                        return orjson.loads(frames[1])
            if self.opts.local and os.getppid() != self.parent:
                raise EdgeStopped("the server that started this edge is gone")

    def _start(self, setup: dict[str, Any]) -> None:
        values = dict(setup["settings"])
        if not self.opts.local:
            values["zeromq_listen_address"] = self.opts.listen or "tcp://*"
            values["command_port"] = self._listeners["command_port"].getsockname()[1]
            values["server_heartbeat_port"] = self._listeners[
                "server_heartbeat_port"
            ].getsockname()[1]
        settings = Settings(**values)
        if self.opts.local:
            host = bind_host(settings.zeromq_listen_address)
            for name in ("command_port", "server_heartbeat_port"):
                self._listeners[name] = reuseport.listener(host, getattr(settings, name))
        # libzmq owns the descriptors from here (it closes them with its sockets)
        fds = {name: sock.detach() for name, sock in self._listeners.items()}
        self._apply_setup(setup, settings)
        self.reactor = Reactor(
            settings,
            self.keys,
            self.clock,
            curve_secret=setup.get("curve_secret"),
            listen_fds=fds,
        )

    def _apply_setup(self, setup: dict[str, Any], settings: Settings) -> None:
        self.keys.node_keys.clear()
        self.keys.curve_index.clear()
        for row in setup["keys"]:
            self.keys.put(*edgelink.keys_of_row(row))
        params = corenodes.Liveness(
            interval=settings.heartbeat_interval / 1000.0,
            decay_window=settings.decay_window,
            threshold=settings.down_threshold,
            rehab_interval=1.0,
            tick=settings.heartbeat_seconds / 4,
        )
        if self.nodes is None:
            self.nodes = edgelink.EdgeNodes(params)
        self.nodes.reset()
        self.nodes.live_jobs = set(setup.get("jobs", ()))

    # Node messages ---------------------------------------------------------------------------
    def _deliver(
        self, key: corenodes.NodeKey, address: bytes, body: dict[str, Any], now: float
    ) -> None:
        assert self.nodes is not None and self.link is not None
        forward, down = self.nodes.on_message(key, address, body, now)
        if down is not None:
            self.link.send_nowait([edgelink.DOWN, address, orjson.dumps([*key, down])])
        if forward:
            if body.get("type") == "heartbeat":
                log.debug("forwarding a heartbeat of %s/%s: %s", key[0], key[1], body)
            self.link.send_nowait([edgelink.MSG, address, orjson.dumps(body)])

    async def _scanner(self) -> None:
        assert self.nodes is not None and self.reactor is not None and self.link is not None
        nodes, reactor, link = self.nodes, self.reactor, self.link

        def scan(now: float) -> None:
            for key, address, reason in nodes.scan(now):
                link.send_nowait([edgelink.DOWN, address, orjson.dumps([*key, reason])])

        await watch_liveness(
            nodes.params.tick or nodes.params.interval / 4,
            lambda: reactor.settings.offline_scan_seconds,
            self.clock,
            nodes.attend,
            scan,
            reactor.behind,
        )

    # The link --------------------------------------------------------------------------------
    def _on_link(self, frames: list[bytes]) -> None:
        assert self.reactor is not None and self.nodes is not None and self.link is not None
        kind = frames[0]
        if kind == edgelink.SEND:
            self.reactor.send_frames(frames[1], frames[2:])
        elif kind == edgelink.BEAT:
            self.reactor.publish(frames[1:])
        elif kind == edgelink.KEYS:
            for row in orjson.loads(frames[1]):
                self.keys.put(*edgelink.keys_of_row(row))
            self.link.send_nowait([edgelink.KEYS_ACK, frames[2]])
        elif kind == edgelink.JOBS:
            change = orjson.loads(frames[1])
            self.nodes.live_jobs.update(change["add"])
            self.nodes.live_jobs.difference_update(change["remove"])
        elif kind == edgelink.FORGET:
            org, node = orjson.loads(frames[1])
            self.nodes.forget((org, node))
        elif kind == edgelink.SETUP:
            log.info("a coordinator set this edge up again: its nodes are announced anew")
            self._apply_setup(orjson.loads(frames[1]), self.reactor.settings)
        elif kind == edgelink.SETTINGS:
            live = {k: v for k, v in orjson.loads(frames[1]).items() if k in edgelink.LIVE_AT_EDGES}
            self.reactor.settings = dataclasses.replace(self.reactor.settings, **live)
        elif kind == edgelink.WHO:
            # every message of ours a new coordinator does not know brings a WHO; one hello
            # answers them all (each costs the coordinator a whole SETUP)
            if trio.current_time() - self.hello_at >= HELLO_EVERY_SECONDS:
                self.hello_at = trio.current_time()
                self.link.send_nowait(self._hello())

    async def _stats(self) -> None:
        """The edge's beat to the coordinator: what it holds and what it costs."""
        assert self.link is not None and self.reactor is not None and self.nodes is not None
        costs: dict[str, Any] = {}
        for n in itertools.count():
            if n % 4 == 0:  # listing 20,000 descriptors is not free: once a second
                usage = resource.getrusage(resource.RUSAGE_SELF)
                costs = {
                    "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
                    "rss_kib": _rss_kib(),
                    "fds": _open_fds(),
                }
            received, dropped = self.reactor.counters()
            stats = {
                "nodes": len(self.nodes.seen),
                "received": dict(received),
                "dropped": dict(dropped),
                "forwarded": self.nodes.forwarded,
                "absorbed": self.nodes.absorbed,
                **costs,
            }
            # also how a new coordinator learns of this edge: it answers WHO to a stranger
            self.link.send_nowait([edgelink.STATS, orjson.dumps(stats)])
            await trio.sleep(STATS_EVERY_SECONDS)

    async def _watch_parent(self, scope: trio.CancelScope) -> None:
        """Stop when the server that started this edge is gone: an orphan must not keep a
        share of the node ports. (Not PR_SET_PDEATHSIG: it fires when the parent's *thread*
        that spawned us ends, and trio spawns from worker threads that come and go.)"""
        while os.getppid() == self.parent:
            await trio.sleep(PARENT_CHECK_SECONDS)
        log.warning("the server that started this edge is gone; stopping")
        scope.cancel()


def _rss_kib() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return None


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
